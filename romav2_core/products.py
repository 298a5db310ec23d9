"""What a robot takes from a matched pair, computed where the model ran, laid out as it goes out.

Each function takes a pair's :class:`~romav2_core.dense.PairGrid` (the model outputs, on the
model's device) and returns named tensors on that device, already in the byte layout of the
message that carries them, so that ``transfer.HostStaging`` brings exactly the wanted bytes to
the host in one copy and the host only wraps them:

* :func:`dense_maps` -- per pixel of A: ``warp [H x W x 2]`` (B px, NaN invalid; 32FC2),
  ``certainty [H x W]`` (32FC1), ``covariance [H x W x 3]`` (sxx, sxy, syy px^2 of B, NaN
  invalid; 32FC3);
* :func:`stereo_maps` -- a rectified pair (``stereo.py``): ``disparity``, ``depth``,
  ``depth_stddev`` ``[H x W]`` (32FC1, NaN invalid) and ``points [H' x W' x 4]`` float32
  ``x y z`` (m) + ``rgb`` (the float32 whose bits are the uint32 ``0x00RRGGBB``: PCL's packed
  colour): the 16-byte points of ``~/points2``;
* :func:`sample_matches` -- ``num`` balanced matches (``sampling.balanced_sample``) as rows of
  :data:`SAMPLE_COLUMNS`, and which rows are real draws;
* :func:`health` -- the rectification check of a stereo pair (``stereo.vertical_disparity``).

:class:`Samples` is the host side of :func:`sample_matches`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from romav2_core import geometry
from romav2_core.dense import PairGrid, interleaved
from romav2_core.quantiles import nan_quantiles
from romav2_core.sampling import UsableAt, balanced_sample
from romav2_core.stereo import RectifiedStereo, vertical_disparity

DENSE_KEYS = ('warp', 'certainty', 'covariance')
STEREO_KEYS = ('disparity', 'depth', 'depth_stddev', 'points')
#: Columns of a sampled match (px of A / B, px^2 of B); stereo odometry adds the stereo
#: disparity of the A pixel (px) and its variance (px^2).
SAMPLE_COLUMNS = ('x_a', 'y_a', 'x_b', 'y_b', 'certainty', 'sxx', 'sxy', 'syy')
STEREO_SAMPLE_COLUMNS = SAMPLE_COLUMNS + ('disparity', 'var_disparity')
#: Every n-th row and column of model-grid cells used by the rectification check and the
#: keyframe decision (a 640 x 640 grid: 6,400 cells, plenty for a median and a 90th
#: percentile).
CHECK_STRIDE = 8


def dense_maps(grid: PairGrid, keys) -> dict[str, Tensor]:
    """The :data:`DENSE_KEYS` in ``keys`` (see the module docstring)."""
    fields, out = grid.fields, {}
    if 'warp' in keys:
        out['warp'] = fields.to_pixels(grid.hw_b)
    if 'certainty' in keys:
        out['certainty'] = fields.certainty.clamp(0, 1)
    if 'covariance' in keys:
        out['covariance'] = grid.covariance_fields
    return out


@dataclass(frozen=True)
class PointCloudLayout:
    """How ``points`` is laid out: the frame (``stereo.POINT_FRAMES``), every ``stride``-th
    row and column, organised (``H' x W'`` with NaN points) or the valid points only."""

    frame: str = 'rectified'
    stride: int = 1
    organized: bool = True


def packed_rgb(image: Tensor) -> Tensor:
    """``[3 x H x W]`` RGB (uint8, or float in [0, 1]) -> ``[H x W]`` float32 whose bits are the
    little-endian uint32 ``0x00RRGGBB`` (PCL's packed colour), put together byte by byte."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    packed = torch.empty((*image.shape[1:], 4), dtype=torch.uint8, device=image.device)
    packed[..., 0], packed[..., 1], packed[..., 2] = image[2], image[1], image[0]
    packed[..., 3] = 0
    return packed.view(torch.float32)[..., 0]


def stereo_maps(grid: PairGrid, stereo: RectifiedStereo, image_a: Tensor, keys,
                disparity_range: tuple[float, float], layout: PointCloudLayout
                ) -> dict[str, Tensor]:
    """The :data:`STEREO_KEYS` in ``keys`` of a rectified pair (A = left, ``image_a``
    ``[3 x H x W]`` its colours for the points). Disparities outside ``disparity_range``
    (px; the DisparityImage's ``min/max_disparity``) are invalid in every map. Unorganised
    points: ``points`` holds the valid ones first, ``points_count`` how many."""
    fields = grid.fields
    scale, offset = geometry.pixel_scale(*grid.hw_b)
    u = torch.arange(grid.hw_a[1], device=fields.warp.device, dtype=fields.warp.dtype)
    # d = u - x_B - (cx_l - cx_r), x_B = x_n scale + offset: one multiply-add; NaN stays
    disparity = torch.addcmul(stereo.disparity(u, offset[0])[None, :], fields.warp[0],
                              fields.warp.new_tensor(-scale[0]))
    lo, hi = disparity_range
    disparity.masked_fill_((disparity < lo) | (disparity > hi), float('nan'))
    depth = stereo.depth(disparity)
    out = {'disparity': disparity, 'depth': depth}
    if 'depth_stddev' in keys:
        out['depth_stddev'] = stereo.depth_stddev(depth, grid.covariance_fields[..., 0])
    if 'points' in keys:
        s = layout.stride
        fields4 = torch.empty((4, *depth[::s, ::s].shape), dtype=torch.float32,
                              device=depth.device)
        stereo.points(depth, layout.frame, s, out=fields4[:3])
        fields4[3] = packed_rgb(image_a[:, ::s, ::s])
        cloud = interleaved(fields4)
        if layout.organized:
            out['points'] = cloud
        else:
            out['points'], out['points_count'] = _valid_first(cloud)
    return {k: v for k, v in out.items() if k in keys or k == 'points_count'}


def _valid_first(cloud: Tensor) -> tuple[Tensor, Tensor]:
    """``[H x W x 4]`` points -> ``[H W + 1 x 4]`` with the finite ones first (in row order),
    and their count, without waiting for the device (the last row collects the others)."""
    flat = cloud.reshape(-1, 4)
    finite = torch.isfinite(flat[:, :3]).all(dim=1)
    rank = torch.cumsum(finite, 0) - 1
    n = flat.shape[0]
    out = torch.empty((n + 1, 4), dtype=flat.dtype, device=flat.device)
    out.index_copy_(0, torch.where(finite, rank, n), flat)
    return out, finite.sum()


def metric_usable(stereo_grid: PairGrid, temporal: PairGrid, stereo: RectifiedStereo,
                  min_disparity: float) -> UsableAt:
    """Which cells (flat indices ``[n]`` of the ``H_o x W_o`` grid -> ``[n]`` bool) are usable
    for a metric pose: valid in both pairs, a stereo disparity of at least ``min_disparity``
    px and a positive x-variance (NaN: unknown) -- decided in the model's normalised units,
    without converting the grid (the conversions are affine and increasing), for the cells
    asked about only. The pose drops the rare infinite variance itself."""
    w_b, w_o = stereo_grid.hw_b[1], stereo_grid.grid_hw[1]
    x_a = stereo_grid.points_a[0, :, 0]                               # [W_o] px of A
    # d = x_a - x_b - cx_offset >= m  <=>  x_b <= x_a - cx_offset - m, in normalised x
    bound = (x_a - stereo.cx_offset - min_disparity + 0.5) * (2 / w_b) - 1
    x_b = stereo_grid.warp.reshape(-1, 2)[:, 0]
    var_x = stereo_grid.covariance.reshape(-1, 4)[:, 0]

    def usable_at(index: Tensor) -> Tensor:
        return stereo_grid.valid_at(index) & temporal.valid_at(index) & \
            (x_b.index_select(0, index) <= bound.index_select(0, index % w_o)) & \
            (var_x.index_select(0, index) > 0)
    return usable_at


def sample_matches(grid: PairGrid, num: int, generator: torch.Generator,
                   usable: Optional[UsableAt] = None,
                   stereo: Optional[tuple] = None) -> dict[str, Tensor]:
    """``num`` balanced matches among the ``usable`` cells (a ``sampling.UsableAt`` of flat
    indices of the grid; default: the valid ones):
    ``samples [n x C]`` (:data:`SAMPLE_COLUMNS`, or :data:`STEREO_SAMPLE_COLUMNS` with
    ``stereo = (stereo pair's PairGrid, RectifiedStereo)``: the disparity and its variance of
    the same cells) and ``drawn [n]`` (False: no match left to draw)."""
    usable = grid.valid_at if usable is None else usable
    points_a = grid.points_a.reshape(-1, 2)
    idx, drawn = balanced_sample(points_a, grid.overlap.reshape(-1).float(), usable, num,
                                 grid.hw_a, generator)
    columns = [points_a.index_select(0, idx), grid.cells(idx)]
    if stereo is not None:
        stereo_grid, rig = stereo
        match = stereo_grid.cells(idx)
        columns += [rig.disparity(columns[0][:, 0:1], match[:, 0:1]), match[:, 3:4]]
    return {'samples': torch.cat(columns, dim=1), 'drawn': drawn}


def health(grid: PairGrid) -> Tensor:
    """``[3]`` median and 90th percentile of ``|y_A - y_B|`` (px) and their count, over every
    :data:`CHECK_STRIDE`-th row and column of the valid cells of a stereo pair."""
    s = CHECK_STRIDE
    sub = grid.strided(s)
    return vertical_disparity(grid.points_a[::s, ::s], sub.points_b_px(), sub.valid)


def tracking_shares(stereo: PairGrid, temporal: Optional[PairGrid]) -> Tensor:
    """``[3]`` on the device, over every :data:`CHECK_STRIDE`-th row and column of cells:
    the share of cells with a valid stereo match, the share with a valid match into the
    temporal pair's B (NaN without one) and their median flow ``|x_B - x_A|`` as a fraction of
    A's width (NaN without one) -- the keyframe decision's inputs (``tracking.py``)."""
    s = CHECK_STRIDE
    stereo_share = stereo.strided(s).valid.float().mean()
    if temporal is None:
        nan = stereo_share.new_tensor(float('nan'))
        return torch.stack([stereo_share, nan, nan])
    sub = temporal.strided(s)
    flow = torch.linalg.vector_norm(sub.points_b_px() - temporal.points_a[::s, ::s], dim=-1)
    median = nan_quantiles(torch.where(sub.valid, flow, float('nan')), (0.5,))[0]
    return torch.stack([stereo_share, sub.valid.float().mean(), median / temporal.hw_a[1]])


@dataclass
class Samples:
    """Sampled matches on the host (float64): A is exact (grid centres), B's covariance in
    px^2 of B; ``disparity``/``var_disparity`` of the A pixels (stereo odometry) or None."""

    points_a: np.ndarray          # [n x 2] OpenCV px of A
    points_b: np.ndarray          # [n x 2] OpenCV px of B
    certainty: np.ndarray         # [n]
    cov_b: np.ndarray             # [n x 2 x 2] px^2 of B
    disparity: Optional[np.ndarray] = None        # [n] px
    var_disparity: Optional[np.ndarray] = None    # [n] px^2

    @classmethod
    def from_host(cls, samples: np.ndarray, drawn: np.ndarray) -> 'Samples':
        s = samples[drawn].astype(np.float64)
        cov = s[:, [5, 6, 6, 7]].reshape(-1, 2, 2)
        extra = (s[:, 8], s[:, 9]) if s.shape[1] > 8 else (None, None)
        return cls(s[:, 0:2], s[:, 2:4], s[:, 4], cov, *extra)

    def __len__(self) -> int:
        return len(self.certainty)
