"""Coordinate conventions and uncertainty conversions: the one place that knows them.

Conventions
-----------
* **Normalised coordinates** (the model's): ``x_n, y_n`` in [-1, 1] over the image, with
  ``align_corners=False`` semantics: the left edge of the image is -1, the right edge +1, and
  pixel ``i`` (0-based) has its centre at ``-1 + (2 i + 1) / W``.
* **Official pixel coordinates** (``RoMaV2.to_pixel_coordinates``): ``(x_n + 1) / 2 * W``; the
  centre of pixel ``i`` is at ``i + 0.5`` (the official convention, upstream issue #28).
* **OpenCV pixel coordinates** (CameraInfo K, cv2, our ROS outputs): pixel centres at integers,
  so ``x_cv = (x_n + 1) / 2 * W - 0.5``.

Uncertainty
-----------
The refiners predict a 2x2 *precision* (inverse covariance) per pixel, in px^-2 of the model's
output grid (H_out x W_out). ``precision_to_covariance`` inverts it; ``rescale_covariance``
maps a covariance from one pixel grid to another (``D Sigma D`` with
``D = diag(W_to / W_from, H_to / H_from)``), which the 0.5 px shift does not affect.
"""
from __future__ import annotations

import torch
from torch import Tensor

#: Smallest determinant accepted when inverting a precision; below it the covariance is NaN.
MIN_PRECISION_DET = 1e-12


def normalized_grid(B: int, H: int, W: int, device=None, dtype=torch.float32) -> Tensor:
    """Pixel-centre grid in normalised coordinates, ``[B x H x W x 2]`` as (x, y)."""
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=device, dtype=dtype)
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1)
    return grid[None].expand(B, H, W, 2)


def pixel_scale(H: int, W: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, offset)`` per axis (x, y) of :func:`to_pixel_coordinates` (OpenCV
    convention) as one multiply-add: ``px = x_n * scale + offset``."""
    return (W / 2, H / 2), (W / 2 - 0.5, H / 2 - 0.5)


def to_pixel_coordinates(x_n: Tensor, H: int, W: int, convention: str = 'opencv') -> Tensor:
    """Normalised ``[..., 2]`` (x, y) to pixels of an ``H x W`` image.

    ``convention='opencv'``: pixel centres at integers (CameraInfo, cv2, ROS outputs).
    ``convention='official'``: pixel centres at +0.5 (``RoMaV2.to_pixel_coordinates``).
    """
    size = x_n.new_tensor([W, H])
    px = (x_n + 1) / 2 * size
    if convention == 'opencv':
        return px - 0.5
    if convention == 'official':
        return px
    raise ValueError(f'unknown pixel convention {convention!r}')


def to_normalized_coordinates(px: Tensor, H: int, W: int, convention: str = 'opencv') -> Tensor:
    """Inverse of :func:`to_pixel_coordinates`."""
    if convention == 'opencv':
        px = px + 0.5
    elif convention != 'official':
        raise ValueError(f'unknown pixel convention {convention!r}')
    return px / px.new_tensor([W, H]) * 2 - 1


def precision_from_params(params: Tensor) -> Tensor:
    """Refiner precision parameters ``[..., 3]`` = (P00, P10, P11) to ``[..., 2, 2]``."""
    p00, p10, p11 = params.unbind(-1)
    return torch.stack((torch.stack((p00, p10), -1), torch.stack((p10, p11), -1)), -2)


def precision_to_covariance(precision: Tensor) -> Tensor:
    """Invert symmetric 2x2 precisions ``[..., 2, 2]`` in closed form (same grid, px^2).

    Where the precision is not positive definite (det <= MIN_PRECISION_DET or a negative
    diagonal) the covariance is NaN: "unknown", never a silently huge or negative value.
    """
    a, b, d = precision[..., 0, 0], precision[..., 0, 1], precision[..., 1, 1]
    det = a * d - b * b
    valid = (det > MIN_PRECISION_DET) & (a > 0)
    inv_det = torch.where(valid, 1.0 / det.clamp_min(MIN_PRECISION_DET),
                          torch.full_like(det, float('nan')))
    return torch.stack((torch.stack((d, -b), -1), torch.stack((-b, a), -1)), -2) * \
        inv_det[..., None, None]


def grid_scale(H_from: int, W_from: int, H_to: int, W_to: int) -> tuple[float, float]:
    """``(s_x, s_y)``: pixels of an ``H_to x W_to`` grid per pixel of an ``H_from x W_from``
    grid over the same image; a covariance scales as ``D Sigma D``, ``D = diag(s_x, s_y)``."""
    return W_to / W_from, H_to / H_from


def rescale_covariance(cov: Tensor, H_from: int, W_from: int, H_to: int, W_to: int) -> Tensor:
    """Covariance ``[..., 2, 2]`` in px^2 of an ``H_from x W_from`` grid to ``H_to x W_to``."""
    d = cov.new_tensor(grid_scale(H_from, W_from, H_to, W_to))
    return cov * d[:, None] * d[None, :]
