"""What a model configuration needs in memory, and what a device has: refuse what cannot run.

The coarse matcher's match embedding is dense attention of every coarse token of A over every
token of B: with ``n = (H_lr / 16) (W_lr / 16)`` tokens it holds about three ``n x n`` fp32
tensors at once (cosine similarities, logits, softmax) per pair and direction. That grows with
the fourth power of the resolution: 17 GB each at 4096 x 4096, so such settings are refused
before the model is built rather than failing (or swapping) at the first frame.
"""
from __future__ import annotations

import os

import torch

#: fp32 ``n x n`` tensors alive together in the match embedding.
MATCH_EMBEDDING_TENSORS = 3
#: Share of the device's memory a configuration may plan to use for those tensors.
USABLE_FRACTION = 0.5


def coarse_match_bytes(H_lr: int, W_lr: int, batch: int = 1) -> int:
    """Peak bytes of the coarse match embedding for ``batch`` pairs at ``H_lr x W_lr``."""
    n = (H_lr // 16) * (W_lr // 16)
    return MATCH_EMBEDDING_TENSORS * n * n * 4 * batch


def device_memory_bytes(device) -> int:
    """Total memory of ``device``: the GPU's for CUDA, the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def check_fits(H_lr: int, W_lr: int, device, batch: int = 1) -> None:
    """ValueError with the reason when ``H_lr x W_lr`` cannot run on ``device``."""
    need = coarse_match_bytes(H_lr, W_lr, batch)
    have = device_memory_bytes(device)
    if need > USABLE_FRACTION * have:
        raise ValueError(
            f'H_lr x W_lr = {H_lr} x {W_lr} needs about {need / 2**30:.1f} GiB for the coarse '
            f'match embedding alone ({MATCH_EMBEDDING_TENSORS} x ({H_lr // 16} * '
            f'{W_lr // 16})^2 fp32 values x batch {batch}); {device} has '
            f'{have / 2**30:.1f} GiB. Use a smaller H_lr/W_lr (the presets use 320-800) and '
            f'H_hr/W_hr for resolution')
