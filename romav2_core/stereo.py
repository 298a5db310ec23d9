"""Rectified stereo geometry: disparity by the DisparityImage contract, depth, its uncertainty,
points, and a calibration check from the matches themselves (no ROS types).

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
* Points: ``Z * K_l^-1 [u v 1]`` in the rectified left frame, rotated into the left camera's
  optical frame (the frame its images' headers name) by ``R_l^T`` (CameraInfo:
  ``p_rect = R p_cam``); with ``R_l = I`` this is stereo_image_proc's point cloud.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def disparity(self, warp_x: np.ndarray) -> np.ndarray:
        """``[H x W]`` disparity px from the right-image x of each left pixel (NaN stays)."""
        u = np.arange(warp_x.shape[1], dtype=np.float64)[None, :]
        return (u - warp_x - self.cx_offset).astype(np.float32)

    def depth(self, disparity: np.ndarray) -> np.ndarray:
        """``[H x W]`` Z in m, NaN where the disparity is not positive or NaN."""
        d = disparity.astype(np.float64)
        with np.errstate(divide='ignore', invalid='ignore'):
            z = np.where(d > 0, self.f * self.baseline / d, np.nan)
        return z.astype(np.float32)

    def depth_stddev(self, depth: np.ndarray, var_x: np.ndarray) -> np.ndarray:
        """``[H x W]`` 1-sigma of Z in m from the x-variance (px^2) of the right position."""
        z = depth.astype(np.float64)
        with np.errstate(invalid='ignore'):
            sigma_d = np.sqrt(np.where(var_x >= 0, var_x, np.nan))
        return (z * z / (self.f * self.baseline) * sigma_d).astype(np.float32)

    def points(self, depth: np.ndarray) -> np.ndarray:
        """``[H x W x 3]`` (x, y, z) m in the left optical frame; NaN where depth is NaN."""
        h, w = depth.shape
        P = self.P_left
        z = depth.astype(np.float64)
        x = (np.arange(w) - P[0, 2])[None, :] / P[0, 0] * z
        y = (np.arange(h) - P[1, 2])[:, None] / P[1, 1] * z
        rect = np.stack([x, y, z], axis=-1)
        if np.array_equal(self.R_left, np.eye(3)):
            return rect.astype(np.float32)
        return (rect @ self.R_left).astype(np.float32)   # row-vector form of R_left^T p


@dataclass(frozen=True)
class RectificationHealth:
    """How far the matches are from a perfect rectification (calibration error, px / deg)."""

    vertical_median_px: float   # median |y_A - y_B| over confident matches
    vertical_p90_px: float      # its 90th percentile
    num_matches: int
    baseline_angle_deg: float | None = None   # estimated vs calibrated baseline direction


def vertical_disparity(points_a: np.ndarray, points_b: np.ndarray) -> RectificationHealth:
    """On rectified images a true match has ``y_A == y_B``: the spread of ``|y_A - y_B|``
    over confident matches (``[N x 2]`` OpenCV px each) measures the calibration error."""
    dy = np.abs(points_a[:, 1] - points_b[:, 1])
    if dy.size == 0:
        return RectificationHealth(float('nan'), float('nan'), 0)
    median, p90 = np.percentile(dy, [50, 90])
    return RectificationHealth(float(median), float(p90), int(dy.size))


def baseline_angle_deg(t_estimated: np.ndarray, stereo: RectifiedStereo) -> float:
    """Angle between an estimated relative-pose translation (rectified right frame) and the
    calibrated baseline direction, degrees."""
    t = np.asarray(t_estimated, np.float64)
    cos = float(t @ stereo.calibrated_translation / np.linalg.norm(t))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
