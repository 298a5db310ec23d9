"""Small, fast DenseMatcher doubles with injectable faults, for the reliability tests.

Loaded by the node under test as ``model_source:=fault_matchers:<factory>`` (this folder on
PYTHONPATH) and used in-process by the in-process and soak tests.

The warp is a known shift: pixel (x, y) of A is at (x - SHIFT_PX, y) in B; certainty 0.9,
covariance 0.25 px^2 of the model grid. A fault is chosen by the sender through the red value
of A's top-left pixel, with green and blue 0 (``mark`` in :func:`image`): MARK_OOM raises ``torch.cuda.OutOfMemoryError``
(the class exists in CPU builds of torch), MARK_ERROR a ``ZeroDivisionError`` deep inside the
matcher. Ordinary images keep that pixel below both marks.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from matcher_doubles import GridDouble

W, H = 160, 120
SHIFT_PX = 2.0
MARK_OOM, MARK_ERROR = 251, 252
FOCAL = 100.0


class ShiftMatcher(GridDouble):
    covariance_grid = np.eye(2) * 0.25

    def __init__(self, output_hw=(24, 32), delay: float = 0.0):
        super().__init__(output_hw, delay)
        self.matched = 0
        self.rss_samples: list[int] = []   # filled by the soak (see sample_rss_every)
        self.sample_rss_every = 0

    def warp_px(self, u, v, a, b):
        return u - SHIFT_PX, v

    def check(self, a, b):
        # a mark is a red value with green and blue exactly 0 (the node's random warm-up
        # image never has that, so it cannot hit a fault by chance)
        r, g, bl = a.corner
        mark = r if g == 0 and bl == 0 else 0
        if mark == MARK_OOM:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB '
                                              '(simulated by the test matcher)')
        if mark == MARK_ERROR:
            _broken_helper()
        self.matched += 1
        if self.sample_rss_every and self.matched % self.sample_rss_every == 0:
            import psutil
            self.rss_samples.append(psutil.Process().memory_info().rss)


def _broken_helper():
    return 1 / 0  # the traceback must show this line


def shift(config=None, device='cpu', weights='', seed=0):
    return ShiftMatcher()


def slow_shift(config=None, device='cpu', weights='', seed=0):
    """0.3 s per pair: a slow model (shutdown while busy, load)."""
    return ShiftMatcher(delay=0.3)


def timed_shift(config=None, device='cpu', weights='', seed=0):
    """A 0.1 s model (sleeping, the GIL free, as in a CUDA wait)."""
    return ShiftMatcher(delay=0.1)


def slow_build(config=None, device='cpu', weights='', seed=0):
    """Takes 4 s to build (a large model loading): the node must advertise nothing before."""
    time.sleep(4.0)
    print('slow_build: matcher built', flush=True)
    return ShiftMatcher()


# ------------------------------------------------------------------ messages
def texture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 250, (h, w, 3), dtype=np.uint8)
    return img


def image(seed: int, stamp, frame_id: str = 'left_optical', mark: int = 0, h: int = H,
          w: int = W, encoding: str = 'rgb8'):
    from std_msgs.msg import Header

    from romav2_ros.image_conversion import numpy_to_imgmsg
    img = texture(seed, h, w)
    if mark:
        img[0, 0] = (mark, 0, 0)
    return numpy_to_imgmsg(img, encoding, Header(stamp=stamp, frame_id=frame_id))


def float_image(seed: int, stamp, frame_id: str, nan_fraction: float = 0.2):
    """32FC1 intensities in [0, 1] with NaN holes (a depth-like float image)."""
    from std_msgs.msg import Header

    from romav2_ros.image_conversion import numpy_to_imgmsg
    rng = np.random.default_rng(seed)
    arr = rng.random((H, W)).astype(np.float32) * 0.9
    arr[rng.random((H, W)) < nan_fraction] = np.nan
    arr[0, 0] = 0.1
    return numpy_to_imgmsg(arr, '32FC1', Header(stamp=stamp, frame_id=frame_id))


def camera_info(frame_id: str, stamp, tx: float = 0.0, h: int = H, w: int = W):
    from sensor_msgs.msg import CameraInfo
    K = np.array([[FOCAL, 0, (w - 1) / 2], [0, FOCAL, (h - 1) / 2], [0, 0, 1.0]])
    info = CameraInfo(width=w, height=h, distortion_model='plumb_bob')
    info.header.frame_id, info.header.stamp = frame_id, stamp
    info.k = K.ravel().tolist()
    info.p = np.c_[K, [-FOCAL * tx, 0, 0]].ravel().tolist()
    info.r = np.eye(3).ravel().tolist()
    info.d = [0.0] * 5
    return info


def stereo_set(k: int, stamp, mark: int = 0):
    """(left, left_info, right, right_info) at ``stamp``; ``mark`` selects a fault."""
    return (image(k, stamp, 'left_optical', mark), camera_info('left_optical', stamp),
            image(k + 1000, stamp, 'right_optical'),
            camera_info('right_optical', stamp, tx=0.1))
