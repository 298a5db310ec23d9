"""One input frame: a decoded image with its header and the camera it was taken with.

``decode(image_msg, camera_info, ...)`` turns the two messages into a :class:`Frame`; every
problem is an :class:`~romav2_ros.image_conversion.InputError` with a counter code. The
numbers of the camera come from ``romav2_core.camera`` (ROI, binning, resize, checks); this
module only reads the message fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from romav2_core import camera as camera_model
from romav2_ros.image_conversion import InputError, to_rgb
from romav2_ros.messages import stamp_ns


@dataclass
class Frame:
    """A decoded image: ``image`` ``[H x W x 3]`` RGB (uint8, or float32 in [0, 1] for 16-bit
    and float sources), its ``camera`` (None = uncalibrated) and, once encoded, ``feats`` and
    the uploaded ``device_image`` ``[3 x H x W]`` (on the model's device; the points' colours)."""

    header: Any
    stamp_ns: int
    image: np.ndarray
    camera: Optional[camera_model.PinholeCamera]
    feats: Any = None
    device_image: Any = None

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def camera_from_info(info, image_hw: tuple[int, int]) -> Optional[camera_model.PinholeCamera]:
    """The camera of an ``image_hw`` image from a ``sensor_msgs/CameraInfo`` (None: K all zero).

    InputError codes: ``nan_camera_info``, ``inconsistent_camera_info`` (ROI/binning that
    cannot describe the image), ``unsupported_distortion``.
    """
    roi = info.roi
    try:
        cam = camera_model.from_calibration(
            info.k, info.d, info.distortion_model, info.r, info.p,
            calib_hw=(info.height, info.width), binning=(info.binning_x, info.binning_y),
            roi=camera_model.Roi(roi.x_offset, roi.y_offset, roi.width, roi.height),
            image_hw=image_hw)
    except camera_model.CameraGeometryError as exc:
        raise InputError(exc.code, exc.message) from None
    if cam is not None and cam.D is not None and \
            cam.distortion_model not in camera_model.DISTORTION_MODELS:
        raise InputError('unsupported_distortion', f'distortion model '
                                                   f'{cam.distortion_model!r}; one of '
                                                   f'{camera_model.DISTORTION_MODELS}')
    return cam


def decode(msg, info, max_image_pixels: int) -> Frame:
    """An Image or CompressedImage with its CameraInfo as a :class:`Frame`."""
    image = to_rgb(msg, max_image_pixels)
    return Frame(msg.header, stamp_ns(msg.header.stamp), image,
                 camera_from_info(info, image.shape[:2]))


def projection(frame: Frame, rectified: bool) -> Optional[tuple]:
    """``(K [3 x 3], D or None, distortion_model, R_rect [3 x 3])`` to interpret the frame's
    pixels: rectified images use ``P`` without distortion and live in the rectified frame
    ``R``; raw images use ``K`` and ``D`` and live in the optical frame. None: uncalibrated."""
    cam = frame.camera
    if cam is None:
        return None
    if rectified:
        return cam.rectified_K, None, cam.distortion_model, cam.R
    return cam.K, cam.D, cam.distortion_model, np.eye(3)
