"""Finding, downloading and validating the official ``romav2.0.1.pt`` checkpoint.

Nothing is downloaded at import or construction time: only ``RoMaV2.from_pretrained`` with no
local path asks for the file, and only when the torch hub cache does not hold it already.

Licence note: the checkpoint embeds DINOv3 weights (DINOv3 License); it is fetched from the
authors' release on the user's machine and never bundled or mirrored by this project.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import torch

logger = logging.getLogger('romav2_core')

OFFICIAL_URL = 'https://github.com/Parskatt/RoMaV2/releases/download/v2.0.1/romav2.0.1.pt'
CHECKPOINT_NAME = 'romav2.0.1.pt'
#: sha256 of romav2.0.1.pt (1,095,883,548 bytes), as published by two independent ports.
OFFICIAL_SHA256 = '1557dec0d21b62366465f7ff4d5fdf228cc695d0582e196ad2b80e05230828b7'
NUM_KEYS = 907


class WeightsError(RuntimeError):
    """The checkpoint is missing, unreadable, or not a RoMa v2 2.0.1 state dict."""


def default_cache_path() -> Path:
    """Where ``torch.hub`` keeps the checkpoint (``$TORCH_HOME/hub/checkpoints/...``)."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / CHECKPOINT_NAME


def resolve_weights(weights: Optional[Union[str, os.PathLike]] = None,
                    download: bool = True) -> Path:
    """A local path to the checkpoint: ``weights`` if given, else the hub cache (downloading
    from the official release into it when absent and ``download`` is True)."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f'weights file {path} does not exist; pass the path of '
                               f'{CHECKPOINT_NAME} (download it from {OFFICIAL_URL})')
        return path
    cached = default_cache_path()
    if cached.is_file():
        return cached
    if not download:
        raise WeightsError(f'no weights given and {cached} does not exist; download '
                           f'{OFFICIAL_URL} to that path or pass a local path')
    logger.info('downloading %s to %s', OFFICIAL_URL, cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(OFFICIAL_URL, str(cached), hash_prefix=OFFICIAL_SHA256[:8])
    except Exception as exc:  # URLError, timeouts, hash mismatch: all mean "no usable file"
        raise WeightsError(
            f'could not download the RoMa v2 weights from {OFFICIAL_URL} ({exc}). On a machine '
            f'without internet, copy {CHECKPOINT_NAME} to {cached} or pass its path '
            f'(weights:=/path/{CHECKPOINT_NAME})') from exc
    return cached


def load_state_dict(path: Union[str, os.PathLike],
                    expected: Optional[dict[str, torch.Tensor]] = None) -> dict:
    """Read a checkpoint on the CPU and check it against ``expected`` (a model's state_dict):
    same keys and shapes. Raises ``WeightsError`` saying what is wrong."""
    path = Path(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickle refused
        raise WeightsError(f'{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: '
                           f'{exc}); the file may be truncated: download it again') from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise WeightsError(f'{path} does not hold a flat state_dict of tensors')
    if expected is not None:
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise WeightsError(
                f'{path} is not a RoMa v2 2.0.1 checkpoint: {len(missing)} missing keys '
                f'(e.g. {missing[:3]}), {len(unexpected)} unexpected keys '
                f'(e.g. {unexpected[:3]}); expected the {NUM_KEYS} keys of {CHECKPOINT_NAME}')
        wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
        if wrong:
            raise WeightsError(f'{path}: {len(wrong)} tensors have unexpected shapes, e.g. '
                               f'{wrong[0]}: {tuple(state[wrong[0]].shape)} instead of '
                               f'{tuple(expected[wrong[0]].shape)}')
    return state
