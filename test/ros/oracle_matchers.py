"""Oracle matchers: DenseMatcher test doubles whose warp is the exact image motion of a known
camera motion over a known non-planar surface, plus scene helpers shared by the tests.

Loaded by the node under test through ``model_source:=oracle_matchers:<factory>`` (this folder
on PYTHONPATH). A pixel ``u`` of A at depth ``depth(u)`` (m, A's frame) maps to
``p_B = R p_A + t`` and projects with ``K`` into B (both images ``W x H``).
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from romav2_core import geometry

W, H = 640, 480
FOCAL = 500.0
K = np.array([[FOCAL, 0, (W - 1) / 2], [0, FOCAL, (H - 1) / 2], [0, 0, 1]])
BASELINE = 0.1                                   # m, stereo: right camera 10 cm to the right
STEREO_R, STEREO_T = np.eye(3), np.array([-BASELINE, 0.0, 0.0])
SEQ_R = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]   # A = frame t, B = frame t-1
SEQ_T = np.array([0.15, 0.02, 0.05])
GRID_COV_PX2 = 0.25                              # oracle covariance, px^2 of the output grid


def depth(u, v):
    """Surface depth (m) seen at pixel (u, v) of A: a bumpy wall 3-5 m away."""
    return 4.0 + np.sin(u / 60.0) * np.cos(v / 45.0)


def certainty(u, v):
    """A left-to-right ramp 0.2 -> 1.0 (so the threshold visibly masks the left side)."""
    return 0.2 + 0.8 * np.clip(u / (W - 1), 0, 1)


def warp_px(u, v, R, t):
    """Pixel of B seen at OpenCV pixel (u, v) of A."""
    z = depth(u, v)
    p = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    q = p @ R.T + t
    return np.stack([K[0, 0] * q[..., 0] / q[..., 2] + K[0, 2],
                     K[1, 1] * q[..., 1] / q[..., 2] + K[1, 2]], -1)


class OracleMatcher:
    """Exact warp of (R, t); certainty :func:`certainty` inside B, 0 outside; covariance
    ``GRID_COV_PX2 * I``. ``delay`` seconds of sleep per match (a slow model)."""

    def __init__(self, R, t, output_hw=(120, 160), delay: float = 0.0, device='cpu'):
        self.R, self.t, self.delay, self.device = R, t, delay, device
        self._hw = output_hw
        self.encoded = 0

    @property
    def output_hw(self):
        return self._hw

    def encode(self, images):
        self.encoded += images.shape[0]
        return {'hw': tuple(images.shape[-2:]), 'n': images.shape[0]}

    def match_features(self, fa, fb):
        time.sleep(self.delay)
        (ha, wa), (hb, wb), (ho, wo) = fa['hw'], fb['hw'], self._hw
        pa = geometry.to_pixel_coordinates(geometry.normalized_grid(1, ho, wo, dtype=torch.float64),
                                           ha, wa).numpy()[0]
        pb = warp_px(pa[..., 0], pa[..., 1], self.R, self.t)
        inside = (pb[..., 0] >= -0.5) & (pb[..., 0] <= wb - 0.5) & \
            (pb[..., 1] >= -0.5) & (pb[..., 1] <= hb - 0.5)
        overlap = np.where(inside, certainty(pa[..., 0], pa[..., 1]), 0.0)
        warp = geometry.to_normalized_coordinates(torch.from_numpy(pb), hb, wb)
        cov = torch.eye(2, dtype=torch.float64).expand(1, ho, wo, 2, 2) * GRID_COV_PX2
        return {'warp_AB': warp[None].float(),
                'overlap_AB': torch.from_numpy(overlap)[None, ..., None].float(),
                'covariance_AB': cov.float()}


def stereo(config=None, device='cpu', weights='', seed=0):
    return OracleMatcher(STEREO_R, STEREO_T, device=device)


def sequential(config=None, device='cpu', weights='', seed=0):
    return OracleMatcher(SEQ_R, SEQ_T, device=device)


def slow_sequential(config=None, device='cpu', weights='', seed=0):
    return OracleMatcher(SEQ_R, SEQ_T, delay=0.3, device=device)


def missing_weights(config=None, device='cpu', weights='', seed=0):
    raise FileNotFoundError('no checkpoint at /nonexistent/romav2.pt and no network')


# ------------------------------------------------------------------ scene rendering
def texture(seed: int = 0) -> np.ndarray:
    """A ``H x W`` RGB uint8 texture with structure at several scales."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.float32)
    for cells, amp in ((8, 0.5), (32, 0.3), (128, 0.2)):
        small = rng.random((cells * H // W + 1, cells, 3)).astype(np.float32)
        img += amp * cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def render_a(img_b: np.ndarray, R, t) -> np.ndarray:
    """Image A consistent with B under the oracle warp: ``A(u) = B(warp(u))``."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    m = warp_px(u, v, R, t).astype(np.float32)
    return cv2.remap(img_b, m[..., 0], m[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT)


def camera_info(frame_id: str, stamp, tx: float = 0.0, k=None):
    """CameraInfo of a rectified ``W x H`` camera with ``P[3] = -f * tx`` (right camera)."""
    from sensor_msgs.msg import CameraInfo
    k = K if k is None else k
    P = np.c_[k, [-k[0, 0] * tx, 0, 0]]
    info = CameraInfo(width=W, height=H, distortion_model='plumb_bob')
    info.header.frame_id, info.header.stamp = frame_id, stamp
    info.k, info.p = k.ravel().tolist(), P.ravel().tolist()
    info.r = np.eye(3).ravel().tolist()
    info.d = [0.0] * 5
    return info


def image_msg(img: np.ndarray, frame_id: str, stamp, encoding: str = 'rgb8'):
    from std_msgs.msg import Header

    from romav2_ros.image_conversion import numpy_to_imgmsg
    return numpy_to_imgmsg(img, encoding, Header(stamp=stamp, frame_id=frame_id))


def stereo_inputs(stamp, seed: int = 0):
    """(left, left_info, right, right_info) of the stereo oracle scene at ``stamp``."""
    right = texture(seed)
    left = render_a(right, STEREO_R, STEREO_T)
    return (image_msg(left, 'left_optical', stamp), camera_info('left_optical', stamp),
            image_msg(right, 'right_optical', stamp),
            camera_info('right_optical', stamp, tx=BASELINE))


def sequence_frames(n: int, seed: int = 0) -> list:
    """``n`` frames; frame k is the oracle's A for B = frame k-1."""
    frames = [texture(seed)]
    for _ in range(n - 1):
        frames.append(render_a(frames[-1], SEQ_R, SEQ_T))
    return frames


def rotation_error_deg(q, R) -> float:
    """Angle (deg) between a geometry_msgs Quaternion and a rotation matrix."""
    from romav2_core.pose import rotation_to_quaternion
    q_true = rotation_to_quaternion(R)
    dot = abs(q.x * q_true[0] + q.y * q_true[1] + q.z * q_true[2] + q.w * q_true[3])
    return float(np.degrees(2 * np.arccos(np.clip(dot, -1, 1))))


def direction_error_deg(p, t) -> float:
    """Angle (deg) between a geometry_msgs Point and the direction of ``t``."""
    v = np.array([p.x, p.y, p.z])
    cos = v @ t / np.linalg.norm(t) / np.linalg.norm(v)
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
