"""sensor_msgs Image / CompressedImage <-> numpy, with cv_bridge semantics, on every install.

One implementation everywhere (a ROS install's ``cv_bridge`` is not used, so the tested code is
the code that runs): arrays are ``[H x W]`` for one channel and ``[H x W x C]`` otherwise, in the
message's channel order (``passthrough``) or converted to a requested colour encoding; rows may
be padded (``step`` > width * pixel size); ``is_bigendian`` is honoured. Float images keep NaN
(``32FC*``: NaN means "no value", as in depth images). Camera drivers' raw formats are
accepted as cv_bridge accepts them: Bayer mosaics (``bayer_rggb8`` ... and their 16-bit
versions, demosaiced) and packed YUV 4:2:2 (``yuv422``/``uyvy`` = UYVY, ``yuv422_yuy2``/``yuyv``
= YUYV byte order).

Every malformed message raises :class:`InputError` (a ``ValueError``) with a short ``code`` the
node counts in its diagnostics. Images larger than :data:`MAX_IMAGE_PIXELS` are refused
(``too_large``) before any buffer is allocated for them.
"""
from __future__ import annotations

import array
import re

import cv2
import numpy as np

#: Largest ``width * height`` accepted (33.5 MP, e.g. 8192 x 4096): above it a message is
#: refused with code ``too_large`` before its data is touched. An 8K frame (7680 x 4320)
#: passes; the model input and dense outputs of a larger image would need several GB.
MAX_IMAGE_PIXELS = 8192 * 4096

#: encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    'rgb8': (np.dtype(np.uint8), 3), 'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4), 'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1), 'mono16': (np.dtype(np.uint16), 1),
    '8UC1': (np.dtype(np.uint8), 1), '8UC3': (np.dtype(np.uint8), 3),
    '8UC4': (np.dtype(np.uint8), 4), '16UC1': (np.dtype(np.uint16), 1),
    '32FC1': (np.dtype(np.float32), 1), '32FC2': (np.dtype(np.float32), 2),
    '32FC3': (np.dtype(np.float32), 3),
    # Camera drivers' raw formats (image_raw): a Bayer mosaic, packed YUV 4:2:2.
    **{f'bayer_{p}{bits}': (np.dtype(np.uint8 if bits == 8 else np.uint16), 1)
       for p in ('rggb', 'bggr', 'gbrg', 'grbg') for bits in (8, 16)},
    'yuv422': (np.dtype(np.uint8), 2), 'uyvy': (np.dtype(np.uint8), 2),
    'yuv422_yuy2': (np.dtype(np.uint8), 2), 'yuyv': (np.dtype(np.uint8), 2),
}
#: Colour encodings a message can be converted to (``desired_encoding``), with their layout.
_COLOUR = {'rgb8': 'RGB', 'bgr8': 'BGR', 'rgba8': 'RGBA', 'bgra8': 'BGRA', 'mono8': 'GRAY',
           '8UC3': 'BGR', '8UC4': 'BGRA', '8UC1': 'GRAY'}
#: Source-only formats -> the OpenCV conversion to RGB. ROS names a Bayer pattern by its first
#: row (rggb: R G / G B), OpenCV by the second row's first two pixels, hence the shift (the
#: same table as cv_bridge's).
_RAW = {'bayer_rggb': cv2.COLOR_BayerBG2RGB, 'bayer_bggr': cv2.COLOR_BayerRG2RGB,
        'bayer_gbrg': cv2.COLOR_BayerGR2RGB, 'bayer_grbg': cv2.COLOR_BayerGB2RGB,
        'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'uyvy': cv2.COLOR_YUV2RGB_UYVY,
        'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUYV, 'yuyv': cv2.COLOR_YUV2RGB_YUYV}


class InputError(ValueError):
    """A message the pipeline cannot use; ``code`` is a short counter key."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _check_encoding(encoding: str) -> tuple[np.dtype, int]:
    if encoding not in ENCODINGS:
        raise InputError('unsupported_encoding',
                         f'unsupported image encoding {encoding!r}; supported: '
                         f'{", ".join(ENCODINGS)}')
    return ENCODINGS[encoding]


def check_size(h: int, w: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """InputError ``zero_size`` / ``too_large`` unless ``0 < w * h <= max_pixels``."""
    if h == 0 or w == 0:
        raise InputError('zero_size', f'empty image ({w} x {h})')
    if h * w > max_pixels:
        raise InputError('too_large', f'image of {w} x {h} = {w * h / 1e6:.1f} MP exceeds the '
                                      f'limit of {max_pixels / 1e6:.1f} MP (MAX_IMAGE_PIXELS)')


def imgmsg_to_numpy(msg, desired_encoding: str = 'passthrough',
                    max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` as an array (a copy, native byte order, padding removed)."""
    dtype, channels = _check_encoding(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(h, w, max_pixels)
    row = w * channels * dtype.itemsize
    if step < row:
        raise InputError('step_mismatch', f'step {step} < width {w} x {channels} channels x '
                                          f'{dtype.itemsize} bytes')
    if len(msg.data) != step * h:
        raise InputError('step_mismatch', f'data has {len(msg.data)} bytes, expected step '
                                          f'{step} x height {h} = {step * h}')
    if channels == 2 and msg.encoding in _RAW and w % 2:
        raise InputError('step_mismatch', f'{msg.encoding} packs pixel pairs: the width {w} '
                                          f'must be even')
    raw = np.frombuffer(msg.data, np.uint8).reshape(h, step)[:, :row]
    order = '>' if msg.is_bigendian else '<'
    # one copy: the array must not alias the message (whose buffer its owner may reuse)
    arr = raw.copy().view(dtype.newbyteorder(order)).astype(dtype, copy=False)
    arr = arr.reshape((h, w) if channels == 1 else (h, w, channels))
    return convert_encoding(arr, msg.encoding, desired_encoding)


def _raw_layout(encoding: str):
    """The OpenCV conversion of a Bayer/YUV encoding (any bit depth) to RGB, or None."""
    return _RAW.get(re.sub(r'^(bayer_[a-z]{4})(8|16)$', r'\1', encoding))


def convert_encoding(arr: np.ndarray, encoding: str, desired: str) -> np.ndarray:
    """Colour conversion to an 8-bit colour encoding (cv_bridge's ``cvtColor`` semantics).

    ``mono16``/``16UC1``/16-bit Bayer convert to 8 bits by dividing by 256, as cv_bridge does;
    Bayer mosaics are demosaiced, YUV 4:2:2 decoded (ITU-R BT.601, as OpenCV).
    """
    if desired in ('passthrough', encoding):
        return arr
    dst = _COLOUR.get(desired)
    raw = _raw_layout(encoding)
    src = _COLOUR.get(encoding, 'GRAY16' if encoding in ('mono16', '16UC1') else None)
    if dst is None or (src is None and raw is None):
        raise InputError('unsupported_encoding',
                         f'cannot convert {encoding!r} to {desired!r}')
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
        src = 'GRAY' if src == 'GRAY16' else src
    if raw is not None:
        arr, src = cv2.cvtColor(arr, raw), 'RGB'
    if src == dst:
        return arr
    return cv2.cvtColor(arr, getattr(cv2, f'COLOR_{src}2{dst}'))


def numpy_to_imgmsg(arr: np.ndarray, encoding: str, header=None):
    """An array (``[H x W]`` or ``[H x W x C]``) as a ``sensor_msgs/Image``, unpadded."""
    from sensor_msgs.msg import Image
    dtype, channels = _check_encoding(encoding)
    arr = np.asarray(arr)
    shape_channels = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.ndim not in (2, 3) or shape_channels != channels or arr.dtype != dtype:
        raise InputError('unsupported_encoding',
                         f'array {arr.dtype} {arr.shape} does not fit encoding {encoding!r} '
                         f'({dtype}, {channels} channel(s))')
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError('zero_size', f'empty image {arr.shape}')
    arr = np.ascontiguousarray(arr, dtype.newbyteorder('<'))
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding, is_bigendian=0,
                step=arr.shape[1] * channels * dtype.itemsize, check_fields=True)
    msg.data = byte_array(arr)
    if header is not None:
        msg.header = header
    return msg


def byte_array(arr: np.ndarray) -> array.array:
    """The bytes of a C-contiguous array as the ``array.array('B')`` that rclpy stores for a
    ``uint8[]`` field: one copy (rclpy converts any other type element by element). A message
    keeps it as it is only when built with ``check_fields=True``: otherwise (the default,
    ``ROS_PYTHON_CHECK_FIELDS`` unset) the field's setter copies it once more."""
    out = array.array('B')
    out.frombytes(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))   # empty arrays too
    return out


def compressed_to_numpy(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (jpeg/png) to ``(array, encoding)``.

    The encoding is what the codec gives: ``bgr8``, ``bgra8``, ``mono8`` or ``mono16``;
    image_transport's ``"rgb8; jpeg compressed bgr8"`` format strings are accepted.
    """
    data = np.frombuffer(msg.data, np.uint8)
    if data.size == 0:
        raise InputError('zero_size', 'empty CompressedImage')
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError('decode_failed', f'cannot decode CompressedImage of format '
                                          f'{msg.format!r} ({data.size} bytes)')
    check_size(arr.shape[0], arr.shape[1], max_pixels)
    if arr.ndim == 2:
        return arr, 'mono16' if arr.dtype == np.uint16 else 'mono8'
    if arr.dtype != np.uint8:
        raise InputError('unsupported_encoding', f'compressed colour image of {arr.dtype}')
    return arr, {3: 'bgr8', 4: 'bgra8'}[arr.shape[2]]


def numpy_to_compressed(arr: np.ndarray, encoding: str, fmt: str = 'jpeg', header=None,
                        jpeg_quality: int = 95):
    """Encode an 8-bit (or ``mono16`` png) array as a ``sensor_msgs/CompressedImage``.

    ``format`` follows image_transport: ``"<encoding>; <fmt> compressed <codec encoding>"``.
    """
    from sensor_msgs.msg import CompressedImage
    if fmt not in ('jpeg', 'png'):
        raise InputError('unsupported_encoding', f'compression format {fmt!r}: jpeg or png')
    _check_encoding(encoding)
    if encoding in ('mono16', '16UC1') and fmt == 'png':
        codec_arr, codec_enc = arr, encoding
    elif encoding in ('rgb8', 'rgba8', 'bgr8', 'bgra8', 'mono8', '8UC1', '8UC3', '8UC4'):
        target = 'bgr8' if encoding in ('rgb8', 'bgr8', '8UC3') or fmt == 'jpeg' else 'bgra8'
        if encoding in ('mono8', '8UC1'):
            target = 'mono8'
        codec_arr, codec_enc = convert_encoding(arr, encoding, target), target
    else:
        raise InputError('unsupported_encoding', f'cannot compress {encoding!r} as {fmt}')
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if fmt == 'jpeg' else []
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', codec_arr, params)
    if not ok:
        raise InputError('encode_failed', f'cv2.imencode failed for {encoding} as {fmt}')
    msg = CompressedImage(format=f'{encoding}; {fmt} compressed {codec_enc}',
                          check_fields=True)
    msg.data = byte_array(buf)
    if header is not None:
        msg.header = header
    return msg


def to_rgb(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any supported Image or CompressedImage as ``[H x W x 3]`` RGB: the model input.

    8-bit sources (incl. Bayer8 and YUV) give ``uint8`` (uploaded as is, converted on the
    model's device); 16-bit sources give float32 ``value / 65535`` and float images float32
    intensities clipped to [0, 1] (NaN -> 0). Alpha is dropped, grey is replicated, Bayer is
    demosaiced at its own bit depth.
    """
    if hasattr(msg, 'format'):
        arr, encoding = compressed_to_numpy(msg, max_pixels)
    else:
        arr, encoding = imgmsg_to_numpy(msg, max_pixels=max_pixels), msg.encoding
    raw = _raw_layout(encoding)
    if raw is not None:
        rgb = cv2.cvtColor(arr, raw)
    elif arr.ndim == 2:
        rgb = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 2:  # 32FC2 has no colour meaning; use its first channel as grey
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
    elif encoding in ('bgr8', 'bgra8', '8UC3', '8UC4'):  # OpenCV's default channel order
        rgb = arr[:, :, 2::-1]
    else:
        rgb = arr[:, :, :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    if rgb.dtype == np.float32:
        return np.ascontiguousarray(
            np.clip(np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0))
    return (rgb.astype(np.float32) / np.iinfo(rgb.dtype).max)


def rgb8(image: np.ndarray) -> np.ndarray:
    """A :func:`to_rgb` image as uint8 RGB (for pictures): float [0, 1] scaled by 255."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
