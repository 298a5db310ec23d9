"""Dense matcher outputs on the model grid -> values in image pixels, on the model's device.

A matcher returns, on its output grid ``H_o x W_o`` over image A (``interface.DenseMatcher``):
``warp [H_o x W_o x 2]`` normalised coordinates in B, ``overlap [H_o x W_o x 1]`` and
``covariance [H_o x W_o x 2 x 2]`` in px^2 of an ``H_o x W_o`` grid over B. This module maps
them to the full images with the conventions of ``geometry.py`` (OpenCV pixels: centres at
integers), with torch on whatever device the tensors live on -- nothing here copies to the
host or waits for the device:

* :class:`PairGrid` -- per grid cell: the cell centre in A, validity, and the match in B in
  pixels for the cells asked for (:meth:`PairGrid.cells`), so that sampling a few thousand
  cells never converts the whole grid;
* :func:`upsample` -- per pixel of A (``[H_A x W_A]``): the dense fields, converted to B's
  pixels after upsampling (bilinear interpolation commutes with the affine conversion).

Validity: a match is valid when its certainty is at least ``threshold`` and it lands inside
B (pixel edges ``-0.5 .. W_B - 0.5``, i.e. normalised coordinates within ``[-1, 1]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from torch import Tensor

from romav2_core import geometry

#: Columns of :meth:`PairGrid.cells`: the match in B (px), certainty, covariance (px^2 of B).
CELL_COLUMNS = ('x', 'y', 'certainty', 'sxx', 'sxy', 'syy')


def inside(points: Tensor, hw: tuple[int, int]) -> Tensor:
    """``[... x 2]`` OpenCV px within the pixel edges of an ``hw`` image (NaN: outside)."""
    h, w = hw
    x, y = points[..., 0], points[..., 1]
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def inside_normalized(warp: Tensor) -> Tensor:
    """``[... x 2]`` normalised coordinates within the image: the pixel-edge test of
    :func:`inside` without converting to pixels (NaN: outside)."""
    return (warp[..., 0].abs() <= 1) & (warp[..., 1].abs() <= 1)


@lru_cache(maxsize=16)
def cell_centres(grid_hw: tuple[int, int], hw_a: tuple[int, int], device: torch.device
                 ) -> Tensor:
    """``[H_o x W_o x 2]`` OpenCV px of A of the output grid's cell centres: cell (i, j) of an
    ``H_o x W_o`` grid over an ``H x W`` image has its centre at
    ``((j + 0.5) W / W_o - 0.5, (i + 0.5) H / H_o - 0.5)``. Cached per size and device."""
    (ho, wo), (h, w) = grid_hw, hw_a
    xs = (torch.arange(wo, device=device, dtype=torch.float64) + 0.5) * (w / wo) - 0.5
    ys = (torch.arange(ho, device=device, dtype=torch.float64) + 0.5) * (h / ho) - 0.5
    return torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1).float()


@dataclass
class PairGrid:
    """One pair's model outputs (one batch element, on the model's device) and the sizes of
    its images; derived values are computed on first use and kept."""

    warp: Tensor                 # [H_o x W_o x 2] normalised coordinates in B
    overlap: Tensor              # [H_o x W_o x 1] in [0, 1]
    covariance: Tensor           # [H_o x W_o x 2 x 2] px^2 of the H_o x W_o grid over B
    hw_a: tuple[int, int]
    hw_b: tuple[int, int]
    threshold: float             # certainty below it: invalid

    @property
    def grid_hw(self) -> tuple[int, int]:
        return tuple(self.warp.shape[:2])

    @cached_property
    def points_a(self) -> Tensor:
        """``[H_o x W_o x 2]`` cell centres in A, OpenCV px of A."""
        return cell_centres(self.grid_hw, tuple(self.hw_a), self.warp.device)

    @cached_property
    def valid(self) -> Tensor:
        """``[H_o x W_o]`` bool: certainty >= threshold and the match inside B."""
        return (self.overlap[..., 0] >= self.threshold) & inside_normalized(self.warp)

    def valid_at(self, index: Tensor) -> Tensor:
        """``[n]`` bool: :attr:`valid` of the cells at flat ``index`` ``[n]``, computed for
        those cells only. (Gathers here and in the sampler use ``index_select``: on a CPU a
        few times faster than ``tensor[index]``.)"""
        return (self.overlap.reshape(-1).index_select(0, index) >= self.threshold) & \
            inside_normalized(self.warp.reshape(-1, 2).index_select(0, index))

    def cells(self, index: Tensor) -> Tensor:
        """``[n x 6]`` float32 of the cells at flat ``index`` ``[n]``: :data:`CELL_COLUMNS`."""
        ho, wo = self.grid_hw
        warp = self.warp.reshape(-1, 2).index_select(0, index).float()
        cov = self.covariance.reshape(-1, 2, 2).index_select(0, index).float()
        cov = geometry.rescale_covariance(cov, ho, wo, *self.hw_b)
        return torch.cat([geometry.to_pixel_coordinates(warp, *self.hw_b),
                          self.overlap.reshape(-1, 1).index_select(0, index).float().clamp(0, 1),
                          cov[:, 0, 0:1], cov[:, 0, 1:2], cov[:, 1, 1:2]], dim=1)

    def strided(self, stride: int) -> 'PairGrid':
        """Every ``stride``-th row and column of cells, as a grid of its own over the same
        images (its :attr:`points_a` are not recomputed: take them from this grid)."""
        s = stride
        return PairGrid(self.warp[::s, ::s], self.overlap[::s, ::s],
                        self.covariance[::s, ::s], self.hw_a, self.hw_b, self.threshold)

    @cached_property
    def fields(self) -> 'DenseFields':
        """The warp, certainty and validity per pixel of A (shared by the dense and stereo
        products)."""
        return DenseFields.of(self)

    @cached_property
    def covariance_fields(self) -> Tensor:
        """``[H_A x W_A x 3]`` contiguous (sxx, sxy, syy) per pixel of A, px^2 of B, NaN
        invalid (the 32FC3 layout)."""
        ho, wo = self.grid_hw
        s_x, s_y = geometry.grid_scale(ho, wo, *self.hw_b)
        up = upsample(self.covariance.flatten(-2), self.hw_a).permute(1, 2, 0)   # [H x W x 4]
        cov = up.index_select(2, torch.tensor([0, 1, 3], device=up.device))    # xx, xy, yy
        cov.mul_(cov.new_tensor([s_x * s_x, s_x * s_y, s_y * s_y]))
        return cov.masked_fill_(~self.fields.valid[..., None], float('nan'))

    def points_b_px(self) -> Tensor:
        """``[H_o x W_o x 2]`` every match in B, OpenCV px of B (the whole grid: for small
        or strided grids)."""
        return geometry.to_pixel_coordinates(self.warp.float(), *self.hw_b)


def upsample(field: Tensor, hw: tuple[int, int]) -> Tensor:
    """A grid field ``[H_o x W_o x C]`` bilinearly upsampled (``align_corners=False``, as
    ``F.interpolate``) to ``[C x H x W]``, a new tensor whose memory is ``H x W x C`` (so
    :func:`interleaved` of it is free). Within half a grid cell of the border the values are
    held (no extrapolation). Upsampling commutes with the affine maps of ``geometry.py``
    (normalised -> px, grid px^2 -> image px^2), so fields are upsampled as the model gives
    them and converted after; covariances are interpolated entry-wise (a convex mix of PSD
    matrices stays PSD).

    Bilinear is linear along each axis in turn: rows, then columns, each a gather of two
    neighbours and one ``lerp``, an axis whose size does not change skipped (the model's grid
    is as wide as a VGA image). On a CPU that is a few times faster than ``F.interpolate``
    on the model's channels-last fields."""
    out = field.float()
    for dim, (n_in, n_out) in enumerate(zip(field.shape[:2], hw)):
        if n_in != n_out:
            first, second, weight = _linear_taps(n_in, n_out, field.device)
            shape = [1, 1, 1]
            shape[dim] = n_out
            out = torch.lerp(out.index_select(dim, first), out.index_select(dim, second),
                             weight.view(shape))
    if out.data_ptr() == field.data_ptr():      # nothing resized: never hand out the model's
        out = out.clone()
    return out.permute(2, 0, 1)


@lru_cache(maxsize=16)
def _linear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``[n_out]`` each: the two source samples of each output sample of linear interpolation
    from ``n_in`` to ``n_out`` samples and the weight of the second (``F.interpolate``'s rule
    with ``align_corners=False``: source position ``(i + 0.5) n_in / n_out - 0.5``, clamped at
    0; the last sample held)."""
    position = ((torch.arange(n_out, device=device, dtype=torch.float32) + 0.5)
                * (n_in / n_out) - 0.5).clamp_min(0)
    first = position.long().clamp_max(n_in - 1)
    second = (first + 1).clamp_max(n_in - 1)
    return first, second, position - first


@dataclass
class DenseFields:
    """A pair's fields per pixel of A (``[H_A x W_A]``), on the model's device: the warp in
    normalised coordinates as upsampled, NaN where invalid, the certainty and the validity."""

    warp: Tensor          # [2 x H x W] normalised in B, NaN invalid
    certainty: Tensor     # [H x W]
    valid: Tensor         # [H x W] bool

    @classmethod
    def of(cls, grid: PairGrid) -> 'DenseFields':
        warp = upsample(grid.warp, grid.hw_a)
        certainty = upsample(grid.overlap, grid.hw_a)[0]
        valid = (certainty >= grid.threshold) & (warp[0].abs() <= 1) & (warp[1].abs() <= 1)
        warp.masked_fill_(~valid, float('nan'))
        return cls(warp, certainty, valid)

    def to_pixels(self, hw_b: tuple[int, int]) -> Tensor:
        """``[H x W x 2]`` contiguous: the warp in OpenCV px of B (NaN invalid)."""
        scale, offset = geometry.pixel_scale(*hw_b)
        px = torch.addcmul(self.warp.new_tensor(offset)[:, None, None], self.warp,
                           self.warp.new_tensor(scale)[:, None, None])
        return interleaved(px)


def interleaved(channels: Tensor) -> Tensor:
    """``[C x H x W]`` -> a contiguous ``[H x W x C]`` (the layout of multi-channel images and
    point clouds): computing channel by channel and interleaving once is the cheapest way on a
    CPU (strided writes or a last-dimension stack cost several times more)."""
    return channels.permute(1, 2, 0).contiguous()
