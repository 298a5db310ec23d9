"""The official checkpoint's key table (``test/data/romav2-state-dict-keys.tsv``) for the tests.

The table lists the 907 tensors of ``romav2.0.1.pt`` as the official ``RoMaV2()`` holds them:
comment lines start with ``#``, then one ``key<TAB>(shape)<TAB>dtype`` row per tensor, in
state_dict order. Only the committed copy is read, so the layout tests run anywhere (CI
included) and never skip.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Union

import torch

KEY_TABLE = Path(__file__).resolve().parent / 'data' / 'romav2-state-dict-keys.tsv'

Row = tuple[str, tuple[int, ...], torch.dtype]


@functools.lru_cache(maxsize=None)
def _all_rows() -> tuple[Row, ...]:
    rows = []
    for n, line in enumerate(KEY_TABLE.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith('#'):
            continue
        key, shape, dtype_name = line.split('\t')
        if not (shape.startswith('(') and shape.endswith(')')):
            raise ValueError(f'{KEY_TABLE}:{n}: shape {shape!r} is not a tuple')
        dims = tuple(int(d) for d in shape[1:-1].split(',') if d.strip())
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f'{KEY_TABLE}:{n}: unknown dtype {dtype_name!r}')
        rows.append((key, dims, dtype))
    return tuple(rows)


def checkpoint_rows(prefix: str = '') -> list[Row]:
    """``(key, shape, dtype)`` of every checkpoint tensor whose key starts with ``prefix``, in
    table (state_dict) order, with ``prefix`` stripped from the keys."""
    return [(key[len(prefix):], shape, dtype)
            for key, shape, dtype in _all_rows() if key.startswith(prefix)]


def checkpoint_entries(prefix: str = '') -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key without prefix: (shape, dtype)}``, the form to compare with a model's
    ``{k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}``."""
    return {key: (shape, dtype) for key, shape, dtype in checkpoint_rows(prefix)}


def state_dict_from_rows(prefix: str = '', fill: str = 'zeros',
                         device: Optional[Union[str, torch.device]] = None,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the checkpoint's keys (``prefix`` stripped), shapes and dtypes.

    ``fill``: ``'zeros'``; ``'random'`` (seeded: standard normal for floating dtypes, integers
    in [0, 1000) otherwise); or ``'empty'`` (uninitialised; with ``device='meta'`` no memory
    at all, for ``load_state_dict(..., assign=True)`` layout checks).
    """
    if fill not in ('zeros', 'random', 'empty'):
        raise ValueError(f"fill must be 'zeros', 'random' or 'empty', not {fill!r}")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in checkpoint_rows(prefix):
        if fill == 'zeros':
            t = torch.zeros(shape, dtype=dtype, device=device)
        elif fill == 'empty':
            t = torch.empty(shape, dtype=dtype, device=device)
        elif dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype=dtype, device=device)
        else:
            t = torch.randint(0, 1000, shape, generator=gen).to(dtype=dtype, device=device)
        state[key] = t
    return state
