"""Oracle matchers: DenseMatcher test doubles whose warp is the exact image motion of a known
camera motion over a known non-planar surface, plus scene helpers shared by the tests.

Loaded by the node under test through ``model_source:=oracle_matchers:<factory>`` (this folder
and ``test/`` on PYTHONPATH). A pixel ``u`` of A at depth ``depth(u)`` (m, A's frame) maps to
``p_B = R p_A + t`` and projects with ``K`` into B (both images ``W x H``).
"""
from __future__ import annotations

import cv2
import numpy as np

from matcher_doubles import GridDouble

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


class OracleMatcher(GridDouble):
    """Exact warp of (R, t); certainty :func:`certainty` inside B, 0 outside; covariance
    ``GRID_COV_PX2 * I``. ``delay`` seconds of sleep per match (a slow model)."""

    covariance_grid = np.eye(2) * GRID_COV_PX2

    def __init__(self, R, t, output_hw=(120, 160), delay: float = 0.0, device='cpu'):
        super().__init__(output_hw, delay)
        self.R, self.t, self.device = R, t, device

    def warp_px(self, u, v, a, b):
        pb = warp_px(u, v, self.R, self.t)
        return pb[..., 0], pb[..., 1]

    def certainty(self, u, v, a, b):
        return certainty(u, v)


def stereo(config=None, device='cpu', weights='', seed=0):
    return OracleMatcher(STEREO_R, STEREO_T, device=device)


def sequential(config=None, device='cpu', weights='', seed=0):
    return OracleMatcher(SEQ_R, SEQ_T, device=device)


def slow_sequential(config=None, device='cpu', weights='', seed=0):
    return OracleMatcher(SEQ_R, SEQ_T, delay=0.3, device=device)


def slow_build(config=None, device='cpu', weights='', seed=0):
    """The stereo oracle after 3 s of "loading" (a large model, a torch.compile warm-up)."""
    import time
    time.sleep(3.0)
    return stereo(config, device, weights, seed)


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


# ------------------------------------------------------------------ more scenes
class DisparityOracle(GridDouble):
    """A rectified pair from a dense disparity map ``[H x W]`` (px; non-finite = unknown):
    pixel (u, v) of the left image is at (u - d(v, u), v + dy) in the right one. The output
    grid is the image itself, so nothing is interpolated; ``dy`` adds a vertical offset (a
    miscalibrated rig)."""

    def __init__(self, disparity: np.ndarray, dy: float = 0.0, covariance_grid=None):
        super().__init__(output_hw=disparity.shape)
        self.d = np.asarray(disparity, np.float64)
        self.dy = dy
        if covariance_grid is not None:
            self.covariance_grid = np.asarray(covariance_grid)

    def _d(self, u, v):
        return self.d[np.rint(v).astype(int), np.rint(u).astype(int)]

    def warp_px(self, u, v, a, b):
        d = self._d(u, v)
        known = np.isfinite(d)
        # unknown pixels: a finite position outside B (certainty 0 makes them invalid)
        return np.where(known, u - np.where(known, d, 0), -100.0), v + self.dy

    def certainty(self, u, v, a, b):
        return np.where(np.isfinite(self._d(u, v)), 0.9, 0.0)


def middlebury(config=None, device='cpu', weights='', seed=0):
    """Middlebury Motorcycle's ground-truth disparity (the bundled sample's scene)."""
    from skimage import data
    return DisparityOracle(data.stereo_motorcycle()[2])


class RectifiedRigOracle(GridDouble):
    """A real (unrectified) rig seen through its rectification (cv2.stereoRectify): the left
    camera looks at :func:`depth` along its *rectified* optical axis; a rectified left pixel
    goes to the left optical frame (``R1^T``), through the rig (``R``, ``T``), into the right
    rectified frame (``R2``) and projects with the right rectified camera matrix
    ``P2[:, :3]`` (``P2``'s ``Tx`` column is that same translation, seen from the left)."""

    def __init__(self, R1, R2, P1, P2, R, T, output_hw=(120, 160)):
        super().__init__(output_hw)
        self.R1, self.R2, self.P1, self.P2, self.R, self.T = R1, R2, P1, P2, R, T

    def warp_px(self, u, v, a, b):
        K1 = self.P1[:, :3]
        z = depth(u, v)
        rect = np.stack([(u - K1[0, 2]) / K1[0, 0] * z, (v - K1[1, 2]) / K1[1, 1] * z, z], -1)
        right_rect = ((rect @ self.R1) @ self.R.T + self.T) @ self.R2.T
        h = right_rect @ self.P2[:, :3].T      # the right camera's own centre: no Tx here
        return h[..., 0] / h[..., 2], h[..., 1] / h[..., 2]


class StereoTrajectory:
    """A rectified stereo rig (``K``, baseline ``BASELINE``) moving along a curved path in
    front of a textured world surface with relief, ``frames`` poses 0.1 s apart.

    World frame = the left camera's optical frame at frame 0 (x right, y down, z forward).
    The surface is ``z = 6 + 0.8 sin(0.9 x) cos(0.7 y)`` m; the path drifts right and forward
    while the rig yaws by 0.6 deg a frame and pitches back and forth (0.2 m / frame, ~12 deg
    of yaw over 20 frames). Images carry their identity in pixel (0, 0): red = frame index,
    green = 1 (left) or 2 (right), blue = 77 (see :func:`tag`).
    """

    PERIOD_NS = 100_000_000

    def __init__(self, frames: int = 24):
        self.frames = frames
        self.poses = []
        for k in range(frames):
            yaw, pitch = np.radians(0.6 * k), np.radians(1.5 * np.sin(k / 4))
            R = cv2.Rodrigues(np.array([pitch, yaw, 0.0]))[0]          # camera -> world
            C = np.array([0.12 * k + 0.004 * k ** 2, 0.02 * np.sin(k / 3), 0.15 * k])
            self.poses.append((R, C))

    @staticmethod
    def surface(x, y):
        return 6.0 + 0.8 * np.sin(0.9 * x) * np.cos(0.7 * y)

    def camera(self, k: int, side: int):
        """(R camera -> world, centre) of frame k's left (side 1) or right (side 2) camera."""
        R, C = self.poses[k]
        return R, C + R @ np.array([BASELINE if side == 2 else 0.0, 0.0, 0.0])

    def warp(self, u, v, k_a: int, side_a: int, k_b: int, side_b: int):
        """Pixels of camera B seeing the surface point at pixel (u, v) of camera A."""
        Ra, Ca = self.camera(k_a, side_a)
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        d = rays @ Ra.T
        s = (6.0 - Ca[2]) / d[..., 2]
        for _ in range(8):  # Newton on the ray parameter: C_z + s d_z = surface(C_xy + s d_xy)
            x, y = Ca[0] + s * d[..., 0], Ca[1] + s * d[..., 1]
            g = Ca[2] + s * d[..., 2] - self.surface(x, y)
            dzdx = 0.8 * 0.9 * np.cos(0.9 * x) * np.cos(0.7 * y)
            dzdy = -0.8 * 0.7 * np.sin(0.9 * x) * np.sin(0.7 * y)
            s = s - g / (d[..., 2] - dzdx * d[..., 0] - dzdy * d[..., 1])
        X = Ca + s[..., None] * d
        Rb, Cb = self.camera(k_b, side_b)
        p = (X - Cb) @ Rb
        return K[0, 0] * p[..., 0] / p[..., 2] + K[0, 2], K[1, 1] * p[..., 1] / p[..., 2] + K[1, 2]

    def relative(self, k: int, j: int = None):
        """True pose of left camera k in left camera j (default k-1): p_j = R p_k + t."""
        (R0, C0), (R1, C1) = self.poses[k - 1 if j is None else j], self.poses[k]
        return R0.T @ R1, R0.T @ (C1 - C0)

    def index(self, stamp, t0_sec: int = 200) -> int:
        """The frame whose stamp is ``stamp``."""
        ns = (stamp.sec - t0_sec) * 1_000_000_000 + stamp.nanosec
        assert ns % self.PERIOD_NS == 0, stamp
        return ns // self.PERIOD_NS

    def in_odom(self, k: int):
        """True pose of left camera k in the odometry frame (left camera 0)."""
        (R0, C0), (Rk, Ck) = self.poses[0], self.poses[k]
        return R0.T @ Rk, R0.T @ (Ck - C0)

    def stamp(self, k: int, t0_sec: int = 200):
        from builtin_interfaces.msg import Time
        ns = k * self.PERIOD_NS
        return Time(sec=t0_sec + ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def inputs(self, k: int, t0_sec: int = 200):
        """(left, left_info, right, right_info) of frame k."""
        stamp = self.stamp(k, t0_sec)
        img = texture(k)
        left, right = tag(img, k, 1), tag(img, k, 2)
        return (image_msg(left, 'left_optical', stamp), camera_info('left_optical', stamp),
                image_msg(right, 'right_optical', stamp),
                camera_info('right_optical', stamp, tx=BASELINE))


def tag(img: np.ndarray, k: int, side: int) -> np.ndarray:
    """A copy of ``img`` whose pixel (0, 0) names frame ``k`` and camera ``side``."""
    out = img.copy()
    out[0, 0] = (k, side, 77)
    return out


class TrajectoryOracle(GridDouble):
    """The warp between any two tagged images of a :class:`StereoTrajectory`: exact, plus
    Gaussian noise of ``noise_px`` (image px, seeded by the pair) that the declared
    covariance describes (``noise_px^2`` px^2 of the image, on the output grid's scale)."""

    def __init__(self, scene: StereoTrajectory, output_hw=(120, 160), noise_px: float = 0.0):
        super().__init__(output_hw)
        self.scene, self.noise_px = scene, noise_px
        grid_px = W / output_hw[1]                       # image px per grid cell (x = y here)
        self.covariance_grid = np.eye(2) * max(noise_px, 0.05) ** 2 / grid_px ** 2

    def warp_px(self, u, v, a, b):
        assert a.corner[2] == 77 and b.corner[2] == 77, 'untagged image'
        x, y = self.scene.warp(u, v, a.corner[0], a.corner[1], b.corner[0], b.corner[1])
        if self.noise_px:
            rng = np.random.default_rng([*a.corner[:2], *b.corner[:2]])
            x = x + rng.normal(0, self.noise_px, x.shape)
            y = y + rng.normal(0, self.noise_px, y.shape)
        return x, y

    def match_features(self, fa, fb):
        # the node's warm-up matches random untagged images: answer with an identity warp
        if any(r.corner[2] != 77 for r in fa.records + fb.records):
            return OracleMatcher(np.eye(3), np.zeros(3), self.output_hw).match_features(fa, fb)
        return super().match_features(fa, fb)


def stereo_odometry(config=None, device='cpu', weights='', seed=0):
    return TrajectoryOracle(StereoTrajectory())
