"""Local correlation of the refiners: one dispatch function over an exact PyTorch path and the
fused ``cuda_ext`` kernel.

Definition (official romav2 2.0.1, ``local_correlation.py``), for ``f_A`` ``[B x C x H x W]``,
``f_B`` ``[B x C x Hb x Wb]``, ``warp`` ``[B x H x W x 2]`` and radius ``r`` (K = (2r+1)^2)::

    corr[b, k, y, x] = sum_c f_A[b, c, y, x] / sqrt(C) * bilinear(f_B)[b, c, warp[b, y, x] + off_k]

* ``f_B`` is *not* pre-warped (the 2.0.1 fix); it is sampled at ``warp + off_k`` with
  ``align_corners=False`` and zero padding outside the image.
* ``off_k = ((-2r + 2 ix) / W, (-2r + 2 iy) / H)`` in normalised coordinates, i.e. whole
  feature-pixel steps of **f_A's** size (the official code takes ``h, w`` from ``feature0``), with
  ``k = iy (2r+1) + ix``.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from romav2_core.constants import size_constant

logger = logging.getLogger('romav2_core')

#: Accepted values of ``impl`` (same as ``config.LOCAL_CORR_IMPLS``).
IMPLS = ('auto', 'cuda', 'torch')

# Resolved paths already announced in the log, so each is logged once per process.
_announced: set[str] = set()


def window_offsets(radius: int, H: int, W: int, device=None) -> Tensor:
    """The K window offsets ``[K x 2]`` (x, y), normalised to an ``H x W`` feature map.

    Built with ``linspace`` exactly as the official code, so the sample coordinates
    ``warp + off_k`` are bit-identical to the reference.
    """
    n = 2 * radius + 1
    dy = torch.linspace(-2 * radius / H, 2 * radius / H, n, device=device, dtype=torch.float32)
    dx = torch.linspace(-2 * radius / W, 2 * radius / W, n, device=device, dtype=torch.float32)
    oy, ox = torch.meshgrid(dy, dx, indexing='ij')
    return torch.stack((ox, oy), dim=-1).reshape(n * n, 2)


def resolve_impl(impl: str, device: torch.device) -> str:
    """The path ``'torch'`` or ``'cuda'`` that ``impl`` selects for tensors on ``device``.

    ``'auto'`` picks the fused kernel for CUDA tensors when ``cuda_ext`` is available, else the
    PyTorch path. ``'cuda'`` raises (RuntimeError/ValueError) when the kernel cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f'local correlation impl {impl!r}: one of {IMPLS}')
    if impl == 'torch':
        return _announce('torch', 'requested')
    on_cuda = torch.device(device).type == 'cuda'
    if impl == 'cuda':
        if not on_cuda:
            raise ValueError(f"local correlation impl 'cuda' needs CUDA tensors, got device "
                             f"{device}; use 'auto' or 'torch'")
        reason = _cuda_ext_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"local correlation impl 'cuda' requested but the cuda_ext "
                               f"kernel is unavailable: {reason}")
        return _announce('cuda', 'requested')
    if not on_cuda:
        return _announce('torch', f'auto: tensors on {device}')
    reason = _cuda_ext_unavailable_reason()
    if reason is not None:
        return _announce('torch', f'auto: cuda_ext unavailable ({reason})')
    return _announce('cuda', 'auto')


def local_correlation(f_A: Tensor, f_B: Tensor, warp: Tensor, radius: int,
                      impl: str = 'auto') -> Tensor:
    """Correlation of each ``f_A`` pixel with a ``(2r+1)^2`` window of ``f_B`` around its warp.

    Args:
        f_A: ``[B x C x H x W]`` features of image A (any float dtype).
        f_B: ``[B x C x Hb x Wb]`` features of image B, un-warped.
        warp: ``[B x H x W x 2]`` normalised (x, y) coordinates in B of each A pixel.
        radius: window radius r in feature pixels (K = (2r+1)^2).
        impl: ``'auto'``, ``'cuda'`` (fused kernel) or ``'torch'`` (see :func:`resolve_impl`).
            Inside ``torch.compile`` it must be the resolved path, ``'cuda'`` or ``'torch'``
            (``RoMaV2`` resolves it eagerly, before calling compiled parts).

    Returns:
        ``[B x K x H x W]`` float32, scaled by ``1 / sqrt(C)``. The ``'cuda'`` result is a
        permuted view of the kernel's ``[B x H x W x K]`` output. Features of any layout
        (channels-last included) are read in place by both paths.
    """
    B, C, H, W = f_A.shape
    if f_B.dim() != 4 or f_B.shape[:2] != (B, C):
        raise ValueError(f'f_B must be [B x C x Hb x Wb] = [{B} x {C} x ..], '
                         f'got {tuple(f_B.shape)}')
    if warp.shape != (B, H, W, 2):
        raise ValueError(f'warp must be [B x H x W x 2] = [{B} x {H} x {W} x 2], '
                         f'got {tuple(warp.shape)}')
    if torch.compiler.is_compiling():
        if impl not in ('cuda', 'torch'):
            raise ValueError(f"local correlation impl {impl!r} under torch.compile: resolve it "
                             f"first (resolve_impl), to 'cuda' or 'torch'")
        path = impl
    else:
        path = resolve_impl(impl, f_A.device)
    if path == 'cuda':
        # Registered by cuda_ext (loaded by resolve_impl), with a fake implementation so that
        # torch.compile traces it; it reads f_A and f_B in whatever layout they have.
        return torch.ops.romav2_cuda_ext.local_correlation(f_A, f_B, warp, radius).permute(
            0, 3, 1, 2)
    return _torch_local_correlation(f_A, f_B, warp, radius)


def _torch_local_correlation(f_A: Tensor, f_B: Tensor, warp: Tensor, radius: int) -> Tensor:
    """Exact PyTorch path: one ``grid_sample`` and channel dot product per offset.

    Peak extra memory is O(B·H·W·(K + C)) floats (the output plus one sampled ``f_B`` and its
    product with ``f_A``), instead of the official fallback's K·C·H·W window tensor.
    """
    B, C, H, W = f_A.shape
    offsets = size_constant('window_offsets', lambda: window_offsets(radius, H, W, f_A.device),
                            radius, H, W, f_A.device)
    # Same association as the reference: (f_A / sqrt(C)) * sample, summed over channels, fp32.
    f_A = f_A.float() / (C ** 0.5)
    f_B = f_B.float()
    warp = warp.float()
    corr = f_A.new_empty(B, offsets.shape[0], H, W)
    for k, offset in enumerate(offsets):
        sampled = F.grid_sample(f_B, warp + offset, mode='bilinear', padding_mode='zeros',
                                align_corners=False)
        corr[:, k] = (f_A * sampled).sum(dim=1)
    return corr


def _cuda_ext_unavailable_reason() -> str | None:
    """None when ``cuda_ext`` can run, else a short reason (import or load error)."""
    try:
        import romav2_cuda_ext as cuda_ext
    except ImportError as exc:
        return f'import cuda_ext failed: {exc}'
    if cuda_ext.is_available():
        return None
    return cuda_ext.load_error() or 'cuda_ext.is_available() is False'


def _announce(path: str, why: str) -> str:
    if path not in _announced:
        _announced.add(path)
        logger.info('local correlation: using the %s path (%s)', path, why)
    return path
