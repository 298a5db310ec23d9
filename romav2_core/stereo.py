"""Rectified stereo geometry: disparity by the DisparityImage contract, depth, its uncertainty,
points, and a calibration check from the matches themselves (no ROS types). The per-pixel maps
are computed with torch on the device the matches live on.

Conventions (``stereo_msgs/DisparityImage``, REP 118, image_geometry):

* A = left, B = right, both rectified; ``P_l``, ``P_r`` their CameraInfo projections (OpenCV
  px of the processed images), ``P_r[0, 3] = Tx = -f * T`` with ``T`` the baseline (m).
* Disparity ``d = x_l - x_r - (cx_l - cx_r)``: pre-adjusted for a principal-point offset
  (Middlebury's ``doffs``, verged rigs), so that ``Z = f T / d`` with ``f = P_r[0, 0]``.
* Depth ``Z`` (m) along the optical axis of the *rectified* left camera, registered to the
  left image; NaN where ``d <= 0`` or the match is invalid.
* Depth uncertainty, first order: ``sigma_Z = Z^2 / (f T) * sigma_d`` with ``sigma_d^2`` the
  x-variance of the right-image position (the left pixel is exact). It assumes Gaussian
  match noise small against ``d``; it understates the spread where ``sigma_d`` approaches
  ``d`` (far points), where ``Z`` itself is badly skewed.
* Points: ``Z * P_l[:3, :3]^-1 [u v 1]`` in the rectified left frame -- the frame the rectified
  images and the depth live in, as stereo_image_proc and depth_image_proc compute them
  (``frame='rectified'``); ``frame='optical'`` rotates them into the left camera's physical
  optical frame by ``R_l^T`` (CameraInfo: ``p_rect = R p_cam``). With ``R_l = I`` both agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from romav2_core.quantiles import nan_quantiles

#: Frames a point cloud can be expressed in (see the module docstring).
POINT_FRAMES = ('rectified', 'optical')


@dataclass(frozen=True)
class RectifiedStereo:
    """A rectified pair from the two CameraInfo projections and rectification rotations."""

    P_left: np.ndarray       # [3 x 4]
    P_right: np.ndarray      # [3 x 4]
    R_left: np.ndarray       # [3 x 3] p_rect_left = R_left p_left_optical
    R_right: np.ndarray      # [3 x 3]

    def __post_init__(self):
        if not (self.P_right[0, 0] > 0 and self.P_left[0, 0] > 0 and self.P_left[1, 1] > 0):
            raise ValueError('stereo projections need positive focal lengths')
        if self.P_right[0, 3] == 0:
            raise ValueError('the right projection has Tx = 0: no baseline')

    @property
    def f(self) -> float:
        """DisparityImage.f: the right camera's rectified focal length, px."""
        return float(self.P_right[0, 0])

    @property
    def baseline(self) -> float:
        """DisparityImage.t: ``-Tx / fx`` of the right camera, m."""
        return float(-self.P_right[0, 3] / self.P_right[0, 0])

    @property
    def fT(self) -> float:
        """``f * T``, px m: ``Z = fT / d``."""
        return self.f * self.baseline

    @property
    def cx_offset(self) -> float:
        """``cx_l - cx_r``, px: what the disparity is adjusted by."""
        return float(self.P_left[0, 2] - self.P_right[0, 2])

    @property
    def calibrated_translation(self) -> np.ndarray:
        """Unit direction of the left camera's centre in the right rectified frame (the
        relative-pose ``t`` that a perfect calibration predicts)."""
        t = np.array([self.P_right[0, 3] / self.P_right[0, 0],
                      self.P_right[1, 3] / self.P_right[1, 1], 0.0])
        return t / np.linalg.norm(t)

    def disparity(self, x_left: Tensor, x_right: Tensor) -> Tensor:
        """Disparity px of left pixels at x ``x_left`` matched at ``x_right`` (any equal
        shapes; NaN stays NaN)."""
        return x_left - x_right - self.cx_offset

    def depth(self, disparity: Tensor) -> Tensor:
        """Z in m, NaN where the disparity is not positive or NaN."""
        return torch.reciprocal(disparity).mul_(self.fT).masked_fill_(disparity <= 0,
                                                                     float('nan'))

    def depth_stddev(self, depth: Tensor, var_x: Tensor) -> Tensor:
        """1-sigma of Z in m from the x-variance (px^2) of the right position (NaN unknown)."""
        return depth * depth * torch.sqrt(var_x.clamp_min(0)) * (1 / self.fT)

    def points(self, depth: Tensor, frame: str = 'rectified', stride: int = 1,
               out: Tensor = None) -> Tensor:
        """``[3 x H' x W']`` (x, y, z) m, channels first, of every ``stride``-th row and column
        of a ``[H x W]`` depth map, in ``frame`` (:data:`POINT_FRAMES`); NaN where the depth is
        NaN. ``out``: a ``[3 x H' x W']`` tensor to write them into."""
        if frame not in POINT_FRAMES:
            raise ValueError(f'point frame {frame!r}: one of {POINT_FRAMES}')
        P = self.P_left
        z = depth[::stride, ::stride]
        h, w = depth.shape
        u = torch.arange(0, w, stride, device=z.device, dtype=torch.float64)
        v = torch.arange(0, h, stride, device=z.device, dtype=torch.float64)
        ray_x = ((u - P[0, 2]) / P[0, 0]).to(z.dtype)
        ray_y = ((v - P[1, 2]) / P[1, 1]).to(z.dtype)
        if out is None:
            out = torch.empty((3, *z.shape), dtype=z.dtype, device=z.device)
        torch.mul(ray_x[None, :], z, out=out[0])
        torch.mul(ray_y[:, None], z, out=out[1])
        out[2] = z
        if frame == 'optical' and not np.array_equal(self.R_left, np.eye(3)):
            R_t = torch.as_tensor(self.R_left.T, dtype=z.dtype, device=z.device)
            out.copy_((R_t @ out.reshape(3, -1)).reshape(out.shape))    # R_left^T p
        return out


@dataclass(frozen=True)
class RectificationHealth:
    """How far the matches are from a perfect rectification (calibration error, px / deg)."""

    vertical_median_px: float   # median |y_A - y_B| over confident matches
    vertical_p90_px: float      # its 90th percentile
    num_matches: int
    baseline_angle_deg: float | None = None   # estimated vs calibrated baseline direction

    @classmethod
    def from_stats(cls, stats) -> 'RectificationHealth':
        """From :func:`vertical_disparity`'s ``(median, p90, count)`` (on the host)."""
        median, p90, count = (float(s) for s in stats)
        return cls(median, p90, int(count))


def vertical_disparity(points_a: Tensor, points_b: Tensor, valid: Tensor) -> Tensor:
    """On rectified images a true match has ``y_A == y_B``: the spread of ``|y_A - y_B|``
    over the ``valid`` matches (``[... x 2]`` OpenCV px each, ``[...]`` bool) measures the
    calibration error. Returns ``[3]`` float32 on the device: median, 90th percentile (linear
    interpolation, as numpy's percentile; NaN without matches) and the count."""
    dy = torch.where(valid, (points_a[..., 1] - points_b[..., 1]).abs(), float('nan'))
    quantiles = nan_quantiles(dy, (0.5, 0.9))
    return torch.cat([quantiles, valid.sum().to(dy.dtype)[None]])


def baseline_angle_deg(t_estimated: np.ndarray, stereo: RectifiedStereo) -> float:
    """Angle between an estimated relative-pose translation (rectified right frame) and the
    calibrated baseline direction, degrees."""
    t = np.asarray(t_estimated, np.float64)
    cos = float(t @ stereo.calibrated_translation / np.linalg.norm(t))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
