"""Synthetic stereo visual-odometry sequences (issue 21's acceptance) and their oracle matcher.

The node loads the matcher as ``model_source:=vo_scenes:<scene>`` (``test/`` and ``test/ros`` on
PYTHONPATH, as ``node_harness.node_env`` sets); the factory's ``seed`` (``random_seed``) seeds
the match noise. In-process: ``VoOracle(scene(name), noise=False)`` for exact matches.

World ``w``: z up; the ground ``z = Ground.height(x, y)`` with gentle relief, in view whatever
the path. A robot's body frame ``base`` (REP 103: x forward, y left, z up) drives over it,
:data:`STEP_M` a frame, frames :data:`PERIOD_NS` apart: its origin on the ground, its yaw from
the path, its pitch and roll from the ground's slope there (6-DoF motion). A rectified stereo
rig is mounted on the body (:data:`MOUNT`: the left camera's optical frame 0.25 m forward,
0.03 m left and 0.7 m up, pitched 15 deg down and rolled 1.5 deg), the right camera
:attr:`StereoCamera.baseline` along the left one's x. Images: a fixed texture per camera with
the frame's tag; nothing is rendered, the oracle knows the geometry.

Oracle (:class:`VoOracle`, a ``GridDouble``): a pixel of camera A casts its ray onto the
ground (Newton on the ray parameter) and the point projects into camera B. A match is valid
(certainty 0.9) where the ray's depression below the horizon exceeds 3x the ground's largest
slope (so the ray meets the ground exactly once: no occlusion, and Newton converges), where
the line from B to the point satisfies the same (B sees it), in front of B, inside B, and
where neither image's frame is covered (``blind``: certainty 0 for every pixel, as a covered
lens). Elsewhere certainty 0 and the warp a finite point outside B. Noise: Gaussian with the
anisotropic covariance :data:`MATCH_COVARIANCE_PX2` (image px^2), drawn per pair of images
with a generator seeded by ``(seed, k_a, side_a, k_b, side_b)``; the matcher declares exactly
that covariance (in px^2 of its output grid). Without noise it declares the same.

Sizes: 320 x 240 images (focal 250 px, 10 cm baseline) and a 60 x 80 output grid by default
(``StereoCamera``, ``output_hw``); about 70 % of the view is matchable ground at 1-12 m
(disparities 2-26 px). A frame costs ~0.2 ms to build (its four messages) and ~1.7 ms a pair
of the oracle's ray casting; through the stereo_odometry pipeline 640 x 480 with a 120 x 160
grid costs about twice the CPU a frame of the default (bench/bench_vo_scenes.py).

Tags: pixel (0, 0) of every image, red = ``k mod 256``, green = ``4 (k div 256) + side``
(side 1 = left, 2 = right), blue = :data:`TAG_BLUE` (78; ``oracle_matchers`` tags with 77):
up to :data:`MAX_FRAMES` frames.

Truth (for evo): :meth:`VoScene.truth_camera_odom`, the left optical frame in ``camodom`` =
the left optical frame at frame 0 (the frame ``stereo_odometry`` publishes in), and
:meth:`VoScene.truth_base_odom`, ``base`` in ``odom`` = ``base`` at frame 0 (REP 105; the
base-frame variant for the tilted mount); :meth:`VoScene.write_truth` writes either as TUM.

Scenes (:data:`SCENES`; each name is also a matcher factory of this module):

============  ======  =====================================================================
name          frames  what
============  ======  =====================================================================
drive_200m    1001    200 m at 0.2 m a frame: straights and turns of radius 8-12 m (left
                      and right, 90-180 deg)
drive_200m_   4002    the same path at 0.05 m a frame (1.5 m/s at 30 Hz)
slow
stop_and_go    241    12 m with a turn, 120 frames standing still, 12 m turning back
covered_lens   121    24 m through an S-bend; frames 59-61 covered (no match at all)
acceptance    1121    drive_200m with a 120-frame stop after 74 m and frames 1000-1002
                      (on the last straight) covered
============  ======  =====================================================================
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from matcher_doubles import GridDouble
from romav2_core.trajectory import write_tum
from romav2_ros.static_tf import rpy_to_rotation

ROS_TESTS = Path(__file__).resolve().parent / 'ros'
if str(ROS_TESTS) not in sys.path:      # oracle_matchers, as node_env's PYTHONPATH has it
    sys.path.insert(0, str(ROS_TESTS))
import oracle_matchers as om  # noqa: E402

TAG_BLUE = 78
MAX_FRAMES = 64 * 256              # green holds 4 (k div 256) + side <= 255
STEP_M = 0.2                       # path length a moving frame
PERIOD_NS = 100_000_000            # frames 0.1 s apart
T0_SEC = 200                       # stamp of frame 0
#: Match noise, px^2 of the images: sigma_x 0.2 px, sigma_y 0.15 px, correlation 0.4.
MATCH_COVARIANCE_PX2 = np.array([[0.04, 0.012], [0.012, 0.0225]])
CERTAINTY = 0.9
OUTSIDE_PX = -100.0                # warp of an invalid match: finite, outside B
DEPRESSION_OVER_SLOPE = 3.0        # a ray steeper than 3x the largest slope meets once
NEWTON_ITERATIONS = 10
NEWTON_TOLERANCE_M = 1e-9
#: Optical axes (x right, y down, z forward) on a level body's axes (x forward, y left, z up).
OPTICAL_IN_BODY = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def se3(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


#: Pose of the left camera's optical frame in ``base`` (4x4).
MOUNT = se3(rpy_to_rotation(np.radians(1.5), np.radians(15.0), 0.0) @ OPTICAL_IN_BODY,
            [0.25, 0.03, 0.7])


@dataclass(frozen=True)
class StereoCamera:
    """A rectified pair of ``width x height`` px cameras, focal ``focal`` px, principal point
    at the centre, the right one ``baseline`` m along the left one's x."""

    width: int = 320
    height: int = 240
    focal: float = 250.0
    baseline: float = 0.1

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.focal, 0, (self.width - 1) / 2],
                         [0, self.focal, (self.height - 1) / 2], [0, 0, 1]])


@dataclass(frozen=True)
class Ground:
    """``z = sum a sin(kx x + ky y + phase)`` m over the world's x-y plane."""

    #: (amplitude m, kx rad/m, ky rad/m, phase rad): 5 cm over ~30 m, 1.2 cm over ~9 m; the
    #: phases put the highest crest at the origin: a robot starting there starts level (REP 105)
    terms: tuple = ((0.05, 0.19, 0.08, np.pi / 2), (0.012, -0.35, 0.62, np.pi / 2))

    def height(self, x, y):
        return sum(a * np.sin(kx * x + ky * y + p) for a, kx, ky, p in self.terms)

    def gradient(self, x, y):
        gx = sum(a * kx * np.cos(kx * x + ky * y + p) for a, kx, ky, p in self.terms)
        gy = sum(a * ky * np.cos(kx * x + ky * y + p) for a, kx, ky, p in self.terms)
        return gx, gy

    @property
    def max_slope(self) -> float:
        """An upper bound of ``|grad z|``."""
        return sum(a * np.hypot(kx, ky) for a, kx, ky, _ in self.terms)

    def steep(self, d: np.ndarray) -> np.ndarray:
        """``[... x 3]`` directions that go down steeply enough to meet the ground once."""
        return -d[..., 2] > DEPRESSION_OVER_SLOPE * self.max_slope * np.hypot(d[..., 0],
                                                                               d[..., 1])

    def intersect(self, C: np.ndarray, d: np.ndarray) -> tuple:
        """Where the rays ``C + s d`` (``d`` ``[... x 3]``) meet the ground: points ``[... x
        3]`` and a validity mask (steep rays whose Newton iteration converged)."""
        ok = self.steep(d)
        d = np.where(ok[..., None], d, [0.0, 0.0, -1.0])     # others: any steep ray
        s = (self.height(C[0], C[1]) - C[2]) / d[..., 2]       # the level plane below C
        for _ in range(NEWTON_ITERATIONS):
            x, y = C[0] + s * d[..., 0], C[1] + s * d[..., 1]
            miss = C[2] + s * d[..., 2] - self.height(x, y)   # height above the ground, m
            if np.abs(miss).max() < NEWTON_TOLERANCE_M:
                break
            gx, gy = self.gradient(x, y)
            s = s - miss / (d[..., 2] - gx * d[..., 0] - gy * d[..., 1])
        else:
            x, y = C[0] + s * d[..., 0], C[1] + s * d[..., 1]
            miss = C[2] + s * d[..., 2] - self.height(x, y)
        return C + s[..., None] * d, ok & (s > 0) & (np.abs(miss) < NEWTON_TOLERANCE_M)


def drive(segments, step_m: float = STEP_M, ground: Ground = Ground()) -> np.ndarray:
    """Body poses ``[N x 4 x 4]`` (``base`` in ``w``) along ``segments``: ``('straight',
    metres)``, ``('turn', degrees, radius m)`` (positive: to the left) or ``('stop', frames)``,
    ``step_m`` of path a moving frame (turns: the nearest whole number of frames)."""
    steps = []                         # (path length, yaw change) of each frame
    for kind, *args in segments:
        if kind == 'straight':
            steps += [(step_m, 0.0)] * round(args[0] / step_m)
        elif kind == 'turn':
            angle, radius = np.radians(args[0]), args[1]
            n = round(abs(angle) * radius / step_m)
            steps += [(abs(angle) * radius / n, angle / n)] * n
        elif kind == 'stop':
            steps += [(0.0, 0.0)] * args[0]
        else:
            raise ValueError(f'unknown segment {kind!r}')
    x = y = yaw = 0.0
    planar = [(x, y, yaw)]
    for ds, dyaw in steps:             # exact arcs
        if dyaw:
            x += ds / dyaw * (np.sin(yaw + dyaw) - np.sin(yaw))
            y += ds / dyaw * (np.cos(yaw) - np.cos(yaw + dyaw))
        else:
            x, y = x + ds * np.cos(yaw), y + ds * np.sin(yaw)
        yaw += dyaw
        planar.append((x, y, yaw))
    poses = []
    for x, y, yaw in planar:
        gx, gy = ground.gradient(x, y)
        forward, left = gx * np.cos(yaw) + gy * np.sin(yaw), -gx * np.sin(yaw) + gy * np.cos(yaw)
        # REP 103: pitch > 0 is nose down (ground falling ahead), roll > 0 is left side up
        R = rpy_to_rotation(np.arctan(left), -np.arctan(forward), yaw)
        poses.append(se3(R, [x, y, ground.height(x, y)]))
    return np.array(poses)


def tag(img: np.ndarray, k: int, side: int) -> np.ndarray:
    """A copy of ``img`` (RGB) whose pixel (0, 0) names frame ``k`` and camera ``side``."""
    if not 0 <= k < MAX_FRAMES or side not in (1, 2):
        raise ValueError(f'cannot tag frame {k} side {side}')
    out = img.copy()
    out[0, 0] = (k % 256, 4 * (k // 256) + side, TAG_BLUE)
    return out


def untag(corner) -> tuple | None:
    """``(k, side)`` from the RGB of pixel (0, 0) (``ImageRecord.corner``); None if untagged."""
    r, g, b = (int(c) for c in corner)
    if b != TAG_BLUE or g % 4 not in (1, 2):
        return None
    return 256 * (g // 4) + r, g % 4


@dataclass
class VoScene:
    """A sequence: body poses ``[N x 4 x 4]`` (``base`` in ``w``), the covered frames, the rig
    and the ground (module docstring)."""

    name: str
    body: np.ndarray
    blind: frozenset = frozenset()
    camera: StereoCamera = StereoCamera()
    ground: Ground = Ground()
    mount: np.ndarray = field(default_factory=lambda: MOUNT.copy())

    def __post_init__(self):
        if len(self.body) > MAX_FRAMES:
            raise ValueError(f'{len(self.body)} frames: the tags hold {MAX_FRAMES}')
        w, h = self.camera.width, self.camera.height
        self._textures = [cv2.resize(om.texture(seed), (w, h), interpolation=cv2.INTER_AREA)
                          for seed in (1, 2)]

    @property
    def frames(self) -> int:
        return len(self.body)

    def camera_pose(self, k: int, side: int) -> np.ndarray:
        """``T_w_cam`` (4x4) of frame ``k``'s left (side 1) or right (side 2) camera."""
        offset = se3(np.eye(3), [self.camera.baseline if side == 2 else 0.0, 0.0, 0.0])
        return self.body[k] @ self.mount @ offset

    def warp(self, u, v, a: tuple, b: tuple) -> tuple:
        """``(x_B, y_B, valid)``: OpenCV px of camera ``b = (k, side)`` seeing the ground at
        px ``(u, v)`` of camera ``a`` (arrays of one shape); exact."""
        K = self.camera.K
        Ta, Tb = self.camera_pose(*a), self.camera_pose(*b)
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)],
                        -1) @ Ta[:3, :3].T
        X, valid = self.ground.intersect(Ta[:3, 3], rays)
        p = (X - Tb[:3, 3]) @ Tb[:3, :3]                      # in B's optical frame
        valid &= self.ground.steep(X - Tb[:3, 3]) & (p[..., 2] > 0)
        z = np.where(valid, p[..., 2], 1.0)
        x = np.where(valid, K[0, 0] * p[..., 0] / z + K[0, 2], OUTSIDE_PX)
        y = np.where(valid, K[1, 1] * p[..., 1] / z + K[1, 2], OUTSIDE_PX)
        return x, y, valid

    # ---------------------------------------------------------------- truth
    def stamp_s(self, k) -> np.ndarray:
        return T0_SEC + np.asarray(k) * PERIOD_NS * 1e-9

    def truth_camera_odom(self) -> np.ndarray:
        """``[N x 4 x 4]``: the left optical frame in ``camodom`` (itself at frame 0)."""
        T = np.array([self.camera_pose(k, 1) for k in range(self.frames)])
        return np.linalg.inv(T[0]) @ T

    def truth_base_odom(self) -> np.ndarray:
        """``[N x 4 x 4]``: ``base`` in ``odom`` (``base`` at frame 0, z up when level)."""
        return np.linalg.inv(self.body[0]) @ self.body

    def write_truth(self, path, frame: str = 'camera') -> Path:
        """The truth as a TUM file (``frame``: 'camera' or 'base'), every frame."""
        T = {'camera': self.truth_camera_odom, 'base': self.truth_base_odom}[frame]()
        # scipy's quaternions: exact to rounding at every angle (a path turns through 180 deg,
        # where an angle-axis route such as cv2.Rodrigues loses ~1e-5)
        write_tum(path, self.stamp_s(np.arange(self.frames)), T[:, :3, 3],
                  Rotation.from_matrix(T[:, :3, :3]).as_quat())
        return Path(path)

    def mount_parameter(self) -> list:
        """The mount as ``[x, y, z, qx, qy, qz, qw]`` (the ``base_to_camera`` parameter)."""
        return [*map(float, self.mount[:3, 3]),
                *map(float, Rotation.from_matrix(self.mount[:3, :3]).as_quat())]

    # ---------------------------------------------------------------- inputs
    def images(self, k: int) -> tuple:
        """(left, right) ``H x W x 3`` RGB uint8 of frame ``k``."""
        return tag(self._textures[0], k, 1), tag(self._textures[1], k, 2)

    def stamp(self, k: int):
        from builtin_interfaces.msg import Time
        ns = k * PERIOD_NS
        return Time(sec=T0_SEC + ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def inputs(self, k: int) -> tuple:
        """(left, left_info, right, right_info) of frame ``k`` (frames 'left_optical' and
        'right_optical', rgb8, rectified camera_info with the right's ``P[3] = -f B``)."""
        stamp, K = self.stamp(k), self.camera.K
        left, right = self.images(k)
        infos = [om.camera_info(frame, stamp, tx=tx, k=K) for frame, tx in
                 (('left_optical', 0.0), ('right_optical', self.camera.baseline))]
        for info in infos:
            info.width, info.height = self.camera.width, self.camera.height
        return (om.image_msg(left, 'left_optical', stamp), infos[0],
                om.image_msg(right, 'right_optical', stamp), infos[1])


class VoOracle(GridDouble):
    """The matcher of a :class:`VoScene` (module docstring). ``noise``: add Gaussian noise
    of :data:`MATCH_COVARIANCE_PX2`; the declared covariance is that one either way."""

    def __init__(self, scene: VoScene, output_hw=(60, 80), noise: bool = True, seed: int = 0,
                 device: str = 'cpu'):
        super().__init__(output_hw)
        self.scene, self.noise, self.seed, self.device = scene, noise, seed, device
        cam = scene.camera
        scale = np.array([cam.width / output_hw[1], cam.height / output_hw[0]])  # px a cell
        self.covariance_grid = MATCH_COVARIANCE_PX2 / np.outer(scale, scale)
        self._noise_factor = np.linalg.cholesky(MATCH_COVARIANCE_PX2)
        self._valid = None                  # (a, b, mask) of the last warp_px

    def warp_px(self, u, v, a, b):
        ka, kb = untag(a.corner), untag(b.corner)
        if ka[0] in self.scene.blind or kb[0] in self.scene.blind:    # a covered lens
            x, y, valid = np.full_like(u, OUTSIDE_PX), np.full_like(v, OUTSIDE_PX), \
                np.zeros(np.shape(u), bool)
        else:
            x, y, valid = self.scene.warp(u, v, ka, kb)
        if self.noise:
            rng = np.random.default_rng([self.seed, *ka, *kb])
            n = rng.standard_normal(np.shape(x) + (2,)) @ self._noise_factor.T
            x, y = np.where(valid, x + n[..., 0], x), np.where(valid, y + n[..., 1], y)
        self._valid = (a, b, valid)
        return x, y

    def certainty(self, u, v, a, b):
        last_a, last_b, valid = self._valid           # GridDouble asks right after warp_px
        assert (last_a, last_b) == (a, b)
        return np.where(valid, CERTAINTY, 0.0)

    def _of_scene(self, record) -> bool:
        tagged = untag(record.corner)
        return tagged is not None and tagged[0] < self.scene.frames and \
            record.hw == (self.scene.camera.height, self.scene.camera.width)

    def match_features(self, fa, fb):
        # the node's warm-up matches random images (whose corner may even look tagged):
        # answer with an identity warp
        if not all(self._of_scene(r) for r in fa.records + fb.records):
            return om.OracleMatcher(np.eye(3), np.zeros(3), self.output_hw).match_features(fa,
                                                                                          fb)
        return super().match_features(fa, fb)


# ------------------------------------------------------------------ the scenes
DRIVE_200M = [('straight', 30), ('turn', 90, 12), ('straight', 25), ('turn', 90, 10),
              ('straight', 20), ('turn', -135, 8), ('straight', 15), ('turn', 180, 9),
              ('straight', 28.4)]
OUT_AND_BACK = ([('straight', 6), ('turn', 28.6, 12)], [('turn', -28.6, 12), ('straight', 6)])


def _acceptance() -> VoScene:
    # the 120-frame stop after the second straight (74 m); covered frames on the last straight
    stop_at = 3
    segments = DRIVE_200M[:stop_at] + [('stop', 120)] + DRIVE_200M[stop_at:]
    return VoScene('acceptance', drive(segments), blind=frozenset({1000, 1001, 1002}))


SCENES = {
    'drive_200m': lambda: VoScene('drive_200m', drive(DRIVE_200M)),
    # the same path at 5 cm a frame: a robot at 1.5 m/s seen at 30 Hz
    'drive_200m_slow': lambda: VoScene('drive_200m_slow', drive(DRIVE_200M, step_m=0.05)),
    'stop_and_go': lambda: VoScene('stop_and_go', drive(OUT_AND_BACK[0] + [('stop', 120)] +
                                                        OUT_AND_BACK[1])),
    'covered_lens': lambda: VoScene('covered_lens', drive(OUT_AND_BACK[0] + OUT_AND_BACK[1]),
                                    blind=frozenset({59, 60, 61})),
    'acceptance': _acceptance,
}


@functools.lru_cache(maxsize=None)
def scene(name: str) -> VoScene:
    """The scene ``name`` of :data:`SCENES` (built once a process)."""
    return SCENES[name]()


def _factory(name: str):
    """The matcher factory ``vo_scenes:<name>`` (``model_source``) of scene ``name``."""
    def factory(config=None, device='cpu', weights='', seed=0):
        return VoOracle(scene(name), seed=seed, device=device)
    factory.__name__ = factory.__qualname__ = name
    return factory


# one module-level factory per scene, as matchers.create looks them up
globals().update({name: _factory(name) for name in SCENES})
