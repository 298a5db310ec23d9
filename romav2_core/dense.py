"""Dense matcher outputs on the model grid -> arrays in image pixels (no ROS types).

A matcher returns, on its output grid ``H_o x W_o`` over image A (``interface.DenseMatcher``):
``warp [H_o x W_o x 2]`` normalised coordinates in B, ``overlap [H_o x W_o x 1]`` and
``covariance [H_o x W_o x 2 x 2]`` in px^2 of an ``H_o x W_o`` grid over B. This module maps
them to the full images with the conventions of ``geometry.py`` (OpenCV pixels: centres at
integers) and brings them to the host in **one packed copy** each:

* :func:`upsample` -- per pixel of A (``[H_A x W_A]``): the dense outputs;
* :func:`grid_matches` -- per grid cell: matches for sampling, pose and calibration checks.

Validity: a match is valid when its certainty is at least ``threshold`` and it lands inside
B (pixel edges ``-0.5 .. W_B - 0.5``). Invalid warps and covariances are NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from romav2_core import geometry


@dataclass
class DenseMatches:
    """Per pixel of A (``H_A x W_A``); float32 arrays on the host."""

    warp: np.ndarray         # [H_A x W_A x 2] (x, y) in B, OpenCV px of B; NaN invalid
    certainty: np.ndarray    # [H_A x W_A] overlap probability in [0, 1]
    covariance: np.ndarray   # [H_A x W_A x 3] (sxx, sxy, syy) of warp, px^2 of B; NaN invalid
    valid: np.ndarray        # [H_A x W_A] bool: certainty >= threshold and inside B


@dataclass
class GridMatches:
    """One match per cell of the model grid, flattened (N = H_o * W_o); float64 host arrays."""

    points_a: np.ndarray     # [N x 2] cell centres in A, OpenCV px of A
    points_b: np.ndarray     # [N x 2] their positions in B, OpenCV px of B
    certainty: np.ndarray    # [N] in [0, 1]
    cov_b: np.ndarray        # [N x 2 x 2] covariance of points_b, px^2 of B (NaN unknown)
    valid: np.ndarray        # [N] bool, as DenseMatches.valid
    grid_hw: tuple[int, int]  # rows x columns of the cells taken


def inside(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``[... x 2]`` OpenCV px within the pixel edges of an ``hw`` image (NaN: outside)."""
    h, w = hw
    x, y = points[..., 0], points[..., 1]
    with np.errstate(invalid='ignore'):
        return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def _packed(warp: Tensor, overlap: Tensor, covariance: Tensor, hw_b: tuple[int, int]
            ) -> Tensor:
    """``[6 x H_o x W_o]``: warp in B px (2), certainty (1), covariance in B px^2 (3)."""
    ho, wo = warp.shape[:2]
    warp_px = geometry.to_pixel_coordinates(warp.float(), *hw_b)
    cov = geometry.rescale_covariance(covariance.float(), ho, wo, *hw_b)
    return torch.cat([warp_px, overlap.float().clamp(0, 1), cov[..., 0, 0:1],
                      cov[..., 0, 1:2], cov[..., 1, 1:2]], dim=-1).permute(2, 0, 1)


def upsample(warp: Tensor, overlap: Tensor, covariance: Tensor, hw_a: tuple[int, int],
             hw_b: tuple[int, int], threshold: float) -> DenseMatches:
    """The grid outputs of one pair bilinearly upsampled (``align_corners=False``) to A's size.

    Upsampling in B's pixels equals upsampling the normalised warp (the map is affine);
    covariances are interpolated entry-wise (a convex mix of PSD matrices stays PSD). Within
    half a grid cell of A's border the values are held (no extrapolation).
    """
    stack = _packed(warp, overlap, covariance, hw_b).contiguous()   # the fast NCHW kernel
    up = F.interpolate(stack[None], size=hw_a, mode='bilinear', align_corners=False)[0]
    host = up.permute(1, 2, 0).contiguous().cpu().numpy()      # the one device->host copy
    warp_px, certainty, cov = host[..., :2], host[..., 2], host[..., 3:]
    valid = (certainty >= threshold) & inside(warp_px, hw_b)
    warp_px[~valid] = np.nan
    cov[~valid] = np.nan
    return DenseMatches(warp=warp_px, certainty=certainty, covariance=cov, valid=valid)


def grid_matches(warp: Tensor, overlap: Tensor, covariance: Tensor, hw_a: tuple[int, int],
                 hw_b: tuple[int, int], threshold: float, stride: int = 1) -> GridMatches:
    """One match per grid cell (every ``stride``-th row and column of cells): cell centres of
    A and their warps in B (full-image px)."""
    ho, wo = warp.shape[:2]
    host = _packed(warp[::stride, ::stride], overlap[::stride, ::stride],
                   covariance[::stride, ::stride], hw_b).permute(1, 2, 0).reshape(-1, 6)
    host = host.cpu().numpy().astype(np.float64)                # the one device->host copy
    h, w = hw_a
    # Cell (i, j) of an H_o x W_o grid over A has its centre at ((j + 0.5) W / W_o - 0.5, ...)
    jj, ii = np.meshgrid(np.arange(0, wo, stride), np.arange(0, ho, stride), indexing='xy')
    points_a = np.stack([(jj + 0.5) * (w / wo) - 0.5, (ii + 0.5) * (h / ho) - 0.5],
                        axis=-1).reshape(-1, 2)
    cov = np.stack([host[:, 3], host[:, 4], host[:, 4], host[:, 5]], axis=-1).reshape(-1, 2, 2)
    certainty = host[:, 2]
    points_b = host[:, :2]
    valid = (certainty >= threshold) & inside(points_b, hw_b)
    return GridMatches(points_a=points_a, points_b=points_b, certainty=certainty, cov_b=cov,
                       valid=valid, grid_hw=jj.shape)
