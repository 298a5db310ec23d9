"""Pinhole camera of one published image: CameraInfo's geometry without ROS types.

A ``sensor_msgs/CameraInfo`` describes the *calibration* (``width x height`` px, ``K``, ``D``,
``R``, ``P``); ``binning_x/y`` and ``roi`` say which part of it the published image is. This
module turns that into the intrinsics of the image actually received, in three steps:

1. **ROI and binning as image_geometry does** (its C++ ``PinholeCameraModel``): ``cx' = (cx -
   roi.x_offset) / binning_x``, ``fx' = fx / binning_x`` (likewise y), the same for ``P``
   including ``Tx' = Tx / binning_x`` (so the baseline ``-Tx / fx`` is unchanged). The image
   these describe is ``roi.width / binning_x`` x ``roi.height / binning_y`` (``roi`` all zero:
   the whole calibrated image).
2. **The resize rule** for an image of another size (a resize upstream, e.g. image_proc's
   resize node): rows 0/1 scale by ``s = size_image / size_step1`` with the pixel-centre
   convention of ``geometry.py`` (OpenCV: centres at integers), ``c' = (c + 0.5) s - 0.5``.
3. **Checks**: non-finite values, a ROI outside the calibrated image, a partly-zero ROI, or a
   ROI/binning without a calibration size are refused with :class:`CameraGeometryError`.

Frames: ``R`` rotates the camera's optical frame into the rectified frame, ``p_rect = R p_cam``
(CameraInfo's definition); rectified pixels live in the rectified frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: CameraInfo distortion models the package can undistort (``pose.normalize_points``).
DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')


class CameraGeometryError(ValueError):
    """A calibration that cannot describe the image; ``code`` names the reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Roi:
    """CameraInfo ``roi`` in full-resolution, unbinned pixels; all zero = the whole image."""

    x_offset: int = 0
    y_offset: int = 0
    width: int = 0
    height: int = 0

    @property
    def is_full(self) -> bool:
        return not (self.x_offset or self.y_offset or self.width or self.height)


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of one image at the size it is processed at (OpenCV pixels).

    ``K`` [3 x 3] and ``D``/``distortion_model`` describe the raw image, ``P`` [3 x 4] the
    rectified one (None when CameraInfo has none), ``R`` [3 x 3] the rectification rotation
    ``p_rect = R p_cam``. ``height``/``width``: the image these intrinsics belong to.
    """

    K: np.ndarray
    D: Optional[np.ndarray]
    distortion_model: str
    R: np.ndarray
    P: Optional[np.ndarray]
    height: int
    width: int

    @property
    def rectified_K(self) -> np.ndarray:
        """The camera matrix of the rectified image: ``P[:, :3]`` (``K`` when P is absent)."""
        return self.P[:, :3] if self.P is not None else self.K


def scale_intrinsics(M: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Rows 0/1 of ``K`` [3 x 3] or ``P`` [3 x 4] for an image resized by ``(sx, sy)``.

    Pixel centres at integers: a pixel edge at ``-0.5`` stays at ``-0.5``, so
    ``c' = (c + 0.5) s - 0.5``; focal lengths and ``Tx``/``Ty`` scale by ``s``.
    """
    M = np.array(M, np.float64)
    M[0, :] *= sx
    M[1, :] *= sy
    M[0, 2] += 0.5 * sx - 0.5
    M[1, 2] += 0.5 * sy - 0.5
    return M


def _crop_and_bin(M: np.ndarray, roi: Roi, bx: int, by: int) -> np.ndarray:
    """image_geometry's ROI/binning adjustment of ``K`` or ``P`` (see the module docstring)."""
    M = np.array(M, np.float64)
    M[0, 2] -= roi.x_offset
    M[1, 2] -= roi.y_offset
    M[0, :] /= bx
    M[1, :] /= by
    return M


def from_calibration(K, D, distortion_model: str, R, P, calib_hw: tuple[int, int],
                     binning: tuple[int, int], roi: Roi, image_hw: tuple[int, int]
                     ) -> Optional[PinholeCamera]:
    """The camera of an ``image_hw`` (H, W) image from CameraInfo fields.

    ``K`` (9), ``D`` (n), ``R`` (9), ``P`` (12) as CameraInfo stores them; ``calib_hw`` =
    CameraInfo (height, width), (0, 0) when unknown; ``binning`` = (binning_x, binning_y), 0
    or 1 = none. Returns None when ``K`` is all zero (an uncalibrated camera). Raises
    :class:`CameraGeometryError` (codes ``nan_camera_info``, ``inconsistent_camera_info``).
    """
    K = np.asarray(K, np.float64).reshape(3, 3)
    P = np.asarray(P, np.float64).reshape(3, 4)
    R = np.asarray(R, np.float64).reshape(3, 3)
    D = np.asarray(D, np.float64).ravel()
    if not all(np.isfinite(a).all() for a in (K, P, R, D)):
        raise CameraGeometryError('nan_camera_info', 'camera_info has NaN or Inf in K, D, R '
                                                     'or P')
    if not K.any():
        return None
    if not R.any():  # an unset R (all zero) on a monocular camera: the identity
        R = np.eye(3)
    bx, by = max(1, int(binning[0])), max(1, int(binning[1]))
    ch, cw = int(calib_hw[0]), int(calib_hw[1])
    adjusted = bx > 1 or by > 1 or not roi.is_full
    if adjusted:
        if not (cw and ch):
            raise CameraGeometryError(
                'inconsistent_camera_info', f'camera_info has binning {bx}x{by} / roi '
                f'{roi} but no calibration size (width x height = {cw} x {ch})')
        if not roi.is_full:
            if not (roi.width and roi.height):
                raise CameraGeometryError(
                    'inconsistent_camera_info', f'camera_info roi {roi} has a zero size but '
                    f'a non-zero offset (all zero means the whole image)')
            if roi.x_offset + roi.width > cw or roi.y_offset + roi.height > ch:
                raise CameraGeometryError(
                    'inconsistent_camera_info', f'camera_info roi {roi} lies outside the '
                    f'calibrated {cw} x {ch} image')
        window = roi if not roi.is_full else Roi(0, 0, cw, ch)
        K, P = _crop_and_bin(K, window, bx, by), _crop_and_bin(P, window, bx, by)
        ch, cw = window.height // by, window.width // bx
    h, w = image_hw
    if cw and ch and (cw, ch) != (w, h):
        K = scale_intrinsics(K, w / cw, h / ch)
        P = scale_intrinsics(P, w / cw, h / ch)
    return PinholeCamera(K=K, D=D if D.any() else None,
                         distortion_model=distortion_model or 'plumb_bob', R=R,
                         P=P if P.any() else None, height=h, width=w)
