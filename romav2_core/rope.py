"""2-D rotary position embedding (RoPE) of DINOv3, shared by the backbone and the mv-ViT.

Definition (axial RoPE, ``normalize_coords="separate"``, no training-time shift/jitter/rescale):

* ``periods[i] = base ** (2 i / (D_head / 2))`` for ``i = 0 .. D_head/4 - 1`` (16 values for a
  64-d head). Both checkpoints store them rounded to bf16 (DINOv3's after the official
  ``model.to(bfloat16)``, the mv-ViT's because its RoPE dtype is bf16), so the buffer is
  initialised with the bf16-rounded values whatever its storage dtype: a random-weights model
  computes exactly what a loaded one does.
* Patch-centre coordinates in [-1, 1]: ``2 * (arange(0.5, n) / n) - 1`` for each axis.
* ``angles = 2 pi coords / periods`` -> ``[HW x 2 x D/4]`` -> flatten (all row angles, then all
  column angles) -> tile twice -> ``[HW x D_head]``.
* Rotation: ``x cos + rotate_half(x) sin`` with ``rotate_half([x1, x2]) = [-x2, x1]`` (split at
  ``D_head / 2``).

The op order mirrors the reference so that the bf16 computation of the mv-ViT rounds
identically (every intermediate of a bf16 computation is rounded to bf16).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from romav2_core.constants import size_constant


class RopeEmbedding(nn.Module):
    """Sin/cos tables of the 2-D RoPE for an ``H x W`` patch grid.

    ``periods`` (``[D_head / 4]``) is a persistent buffer stored in ``buffer_dtype`` (the
    checkpoint holds it as bf16; an fp32 buffer holds the same bf16-rounded values).
    """

    def __init__(self, head_dim: int, base: float = 100.0,
                 buffer_dtype: torch.dtype = torch.float32):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f'head_dim={head_dim} must be divisible by 4 (two axes, sin/cos)')
        n = head_dim // 4
        periods = base ** (2 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer('periods', periods.to(torch.bfloat16).to(buffer_dtype),
                             persistent=True)

    def forward(self, H: int, W: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(sin, cos)``, each ``[H*W x D_head]`` in ``dtype``, computed entirely in ``dtype``.

        DINOv3 uses fp32 (from its bf16 ``periods``); the official mv-ViT uses bf16 throughout
        (coordinates, angles and sin/cos are all rounded to bf16).
        """
        coords = size_constant('rope_coords', lambda: patch_coords(H, W, self.periods.device,
                                                                  dtype),
                               H, W, self.periods.device, dtype)
        # (2 pi) * coords first, then / periods: the reference's order (matters in bf16).
        angles = 2 * math.pi * coords[:, :, None] / self.periods.to(dtype)[None, None, :]
        angles = angles.flatten(1, 2).tile(2)  # [HW x D_head]
        return torch.sin(angles), torch.cos(angles)


def patch_coords(H: int, W: int, device, dtype: torch.dtype) -> Tensor:
    """Patch-centre coordinates ``[H*W x 2]`` (row, column) in [-1, 1], computed in ``dtype``
    (size-only, so ``RopeEmbedding`` caches them; the angles depend on the loaded periods)."""
    dd = dict(device=device, dtype=dtype)
    coords_h = torch.arange(0.5, H, **dd) / H
    coords_w = torch.arange(0.5, W, **dd) / W
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing='ij'), dim=-1)
    return 2.0 * coords.flatten(0, 1) - 1.0


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim, split at its middle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate ``x`` ``[..., N x D_head]`` by the tables ``[N x D_head]`` (same dtype as ``x``)."""
    return (x * cos) + (rotate_half(x) * sin)
