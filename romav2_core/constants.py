"""Size-only constants of a forward (pixel-centre grids, window offsets, scale vectors), made
once per device and size instead of once per call.

Each of these tensors depends only on sizes and the device: rebuilding one per call costs a
host-to-device copy (``torch.tensor(..., device=cuda)`` synchronises) or a few kernels. Values
derived from loaded buffers (RoPE tables, the Fourier grid embedding) are *not* cached here:
they would go stale after ``load_state_dict``.

Inside ``torch.compile`` the constant is built in the graph instead (the compiler folds it), so
tracing sees no Python-side cache.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

import torch
from torch import Tensor

from romav2_core.geometry import normalized_grid

#: Oldest entries are dropped beyond this (a model uses a handful per resolution).
MAX_ENTRIES = 128

_cache: OrderedDict[tuple, Tensor] = OrderedDict()
_lock = threading.Lock()


def size_constant(name: str, make: Callable[[], Tensor], *key: Hashable) -> Tensor:
    """The tensor ``make()`` for ``(name, *key)``, built once; ``key`` must hold everything the
    value depends on (sizes, device, dtype). The result is shared: never modify it in place.

    Made outside inference mode, so a cached tensor can also enter autograd-recording code.
    """
    if torch.compiler.is_compiling():
        return make()
    full_key = (name, *key)
    with _lock:
        value = _cache.get(full_key)
        if value is not None:
            _cache.move_to_end(full_key)
            return value
    with torch.inference_mode(False):
        value = make()
    with _lock:
        _cache[full_key] = value
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return value


def pixel_grid(B: int, H: int, W: int, device=None) -> Tensor:
    """``geometry.normalized_grid`` ``[B x H x W x 2]`` fp32 (x, y), built once per size and
    device: an expanded view of a shared tensor."""
    device = torch.device('cpu' if device is None else device)
    return size_constant('pixel_grid', lambda: normalized_grid(1, H, W, device=device),
                         H, W, device).expand(B, H, W, 2)
