"""From synchronised input messages to output messages: shared by the node and the bag replay.

No rclpy node lives here: messages in, messages out. The caller says which outputs it wants
(the node: topics with subscribers), and only those are computed.

Pairs: stereo A = left, B = right; sequential A = current frame t, B = previous frame t-1
(each frame is encoded once; its features are kept for the next pair).

Outputs (keys = the node's topic names under ``~/``), all with A's header unless noted:

=====================  =========================================================================
``warp``               Image 32FC2 ``[H_A x W_A]``: position in B (OpenCV px of B) of each pixel
                       of A; NaN where certainty < threshold or outside B
``certainty``          Image 32FC1 ``[H_A x W_A]``: overlap probability in [0, 1]
``covariance``         Image 32FC3 ``[H_A x W_A]``: (sxx, sxy, syy) of ``warp`` in px^2 of B;
                       NaN where ``warp`` is NaN or the model gives none
``disparity``          stereo_msgs/DisparityImage (stereo only): ``x_A - x_B`` px, ``f`` and
                       ``T = -P[3] / P[0]`` from the right camera_info (scaled to the image)
``matches``            romav2_ros/SampledMatches (certainty-weighted, spatially balanced)
``relative_pose``      PoseWithCovarianceStamped: pose of A's camera in B's optical frame;
                       stamp = A's stamp, ``frame_id`` = B's frame_id (the frame it is in)
``relative_pose_info`` romav2_ros/RelativePose (both stamps, inlier counts)
``matches_viz`` ...    Image rgb8: ``matches_viz``, ``warp_viz``, ``covariance_viz``
=====================  =========================================================================

Dense outputs have A's original resolution: the model grid is upsampled bilinearly
(``align_corners=False``) and covariances are rescaled from the model grid to B's pixels with
``geometry.rescale_covariance``. Intrinsics follow any difference between camera_info and
image size (binning / resize), with the pixel-centre convention of ``geometry.py``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from romav2_core import geometry, visualization
from romav2_core.interface import DenseMatcher
from romav2_core.pose import DISTORTION_MODELS, estimate_relative_pose
from romav2_ros.image_conversion import (MAX_IMAGE_PIXELS, InputError, numpy_to_imgmsg,
                                         to_rgb_float)

__all__ = ['InputError', 'PipelineConfig', 'PipelineResult', 'MatchingPipeline', 'OUTPUTS',
           'DENSE_OUTPUTS', 'VIZ_OUTPUTS']

OUTPUTS = ('warp', 'certainty', 'covariance', 'disparity', 'matches', 'relative_pose',
           'relative_pose_info', 'matches_viz', 'warp_viz', 'covariance_viz')
VIZ_OUTPUTS = ('matches_viz', 'warp_viz', 'covariance_viz')
#: Outputs that need the model grid upsampled to A's resolution.
DENSE_OUTPUTS = {'warp', 'certainty', 'covariance', 'disparity', 'warp_viz', 'covariance_viz'}
#: Outputs that need sampled matches.
SAMPLE_OUTPUTS = {'matches', 'relative_pose', 'relative_pose_info', 'matches_viz'}
POSE_OUTPUTS = {'relative_pose', 'relative_pose_info'}
#: DisparityImage.delta_d: RoMa disparities are continuous; 1/16 px as stereo_image_proc.
DISPARITY_DELTA_D = 1.0 / 16


@dataclass
class PipelineConfig:
    """Processing options (the node's runtime parameters of the same names)."""

    mode: str = 'stereo'                 # 'stereo' or 'sequential'
    certainty_threshold: float = 0.05    # below: warp/covariance/disparity NaN, not sampled
    num_samples: int = 2000              # matches sampled for 'matches' and the pose
    ransac_threshold_px: float = 1.0     # essential-matrix inlier threshold, px
    rectified: bool = True               # True: use P (no distortion); False: K + D
    max_stamp_jump: float = 5.0          # s; a larger gap between frames resets the sequence
    viz_max_matches: int = 200           # lines drawn in 'matches_viz'
    seed: int = 0                        # sampling RNG seed (reproducible outputs)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger inputs: InputError 'too_large'

    def __post_init__(self):
        if self.mode not in ('stereo', 'sequential'):
            raise ValueError(f'mode={self.mode!r}: stereo or sequential')


@dataclass
class PipelineResult:
    messages: dict = field(default_factory=dict)     # output key -> ROS message
    timings: dict = field(default_factory=dict)      # stage -> seconds
    notes: list = field(default_factory=list)        # 'code: why an output is missing'


@dataclass
class _Camera:
    """Intrinsics of one image at its actual size. ``K`` None = uncalibrated."""

    K: Optional[np.ndarray]
    D: Optional[np.ndarray]
    model: str
    P: Optional[np.ndarray]


@dataclass
class _Frame:
    header: object
    stamp_ns: int
    rgb: np.ndarray          # [H x W x 3] float32 in [0, 1]
    camera: _Camera
    feats: object = None

    @property
    def hw(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _scale_intrinsics(M: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Rows 0/1 of K or P for an image resized by (sx, sy), pixel centres at integers."""
    M = M.copy()
    M[0, :] *= sx
    M[1, :] *= sy
    M[0, 2] += 0.5 * sx - 0.5   # c' = (c + 0.5) s - 0.5, the rest of row 2's term is scaled
    M[1, 2] += 0.5 * sy - 0.5
    return M


def camera_from_info(info, height: int, width: int, rectified: bool) -> _Camera:
    """Check a CameraInfo and return the intrinsics of the ``height x width`` image.

    NaN/Inf anywhere -> InputError 'nan_camera_info'; K all zero -> uncalibrated (K None).
    """
    K = np.asarray(info.k, np.float64).reshape(3, 3)
    P = np.asarray(info.p, np.float64).reshape(3, 4)
    D = np.asarray(info.d, np.float64)
    if not (np.isfinite(K).all() and np.isfinite(P).all() and np.isfinite(D).all()
            and np.isfinite(np.asarray(info.r)).all()):
        raise InputError('nan_camera_info', 'camera_info has NaN or Inf in K, D, R or P')
    if not K.any():
        return _Camera(None, None, '', None)
    sx = width / info.width if info.width else 1.0
    sy = height / info.height if info.height else 1.0
    K, P = _scale_intrinsics(K, sx, sy), _scale_intrinsics(P, sx, sy)
    if rectified:
        return _Camera(P[:, :3] if P.any() else K, None, '', P if P.any() else None)
    model = info.distortion_model or 'plumb_bob'
    if D.any() and model not in DISTORTION_MODELS:
        raise InputError('unsupported_distortion', f'distortion model {model!r}; one of '
                                                   f'{DISTORTION_MODELS}')
    return _Camera(K, D if D.any() else None, model, P if P.any() else None)


def balanced_sample(points_a: np.ndarray, certainty: np.ndarray, num: int,
                    rng: np.random.Generator, hw_a: tuple[int, int]) -> np.ndarray:
    """Indices of ``num`` matches: drawn with probability proportional to certainty, then
    thinned to an even spatial spread over A (inverse density on a 32 x 32 cell grid; the
    idea of RoMa's KDE balancing, cheaper). All candidates when there are at most ``num``."""
    n = len(certainty)
    if n <= num:
        return np.arange(n)
    p = certainty / certainty.sum()
    cand = rng.choice(n, size=min(4 * num, n), replace=False, p=p)
    cells = 32
    cx = np.clip((points_a[cand, 0] / hw_a[1] * cells).astype(int), 0, cells - 1)
    cy = np.clip((points_a[cand, 1] / hw_a[0] * cells).astype(int), 0, cells - 1)
    cell = cy * cells + cx
    density = np.bincount(cell, minlength=cells * cells)[cell]
    w = 1.0 / density
    return cand[rng.choice(len(cand), size=num, replace=False, p=w / w.sum())]


class MatchingPipeline:
    """Decode -> match -> post-process -> messages, for stereo pairs or an image sequence."""

    def __init__(self, matcher: DenseMatcher, config: PipelineConfig):
        self.matcher = matcher
        self.config = config
        self._prev: Optional[_Frame] = None
        self._last_stamp: Optional[int] = None
        self._rng = np.random.default_rng(config.seed)
        #: Notes of the latest call, also when it returned None (a sequence restart after a
        #: stamp jump gives no result but is worth reporting).
        self.last_notes: list[str] = []

    def reset(self) -> None:
        """Forget the previous frame and stamp (sequential restarts with the next frame)."""
        self._prev = None
        self._last_stamp = None

    # ---------------------------------------------------------------- entry points
    def process_stereo(self, left, left_info, right, right_info, wanted: set) -> PipelineResult:
        """A = left, B = right (sensor_msgs Image or CompressedImage + CameraInfo)."""
        res = PipelineResult()
        self.last_notes = res.notes
        t0 = time.perf_counter()
        a = self._decode(left, left_info)
        b = self._decode(right, right_info)
        if a.hw != b.hw:
            raise InputError('size_mismatch', f'left {a.hw[1]}x{a.hw[0]} and right '
                                              f'{b.hw[1]}x{b.hw[0]} differ')
        self._check_stamp(a.stamp_ns, res)
        res.timings['decode'] = time.perf_counter() - t0
        self._run(a, b, wanted, res)
        return res

    def process_sequential(self, image, info, wanted: set) -> Optional[PipelineResult]:
        """A = this frame, B = the previous one. None for the first frame and after a reset
        (a gap over ``max_stamp_jump``); a stamp not after the previous one resets the
        sequence and raises InputError 'stamp_out_of_order'."""
        res = PipelineResult()
        self.last_notes = res.notes
        t0 = time.perf_counter()
        a = self._decode(image, info)
        restarted = self._check_stamp(a.stamp_ns, res)
        res.timings['decode'] = time.perf_counter() - t0
        t1 = time.perf_counter()
        a.feats = self._encode(a)
        res.timings['model'] = time.perf_counter() - t1
        prev, self._prev = self._prev, a
        if prev is None or restarted:
            return None
        self._run(a, prev, wanted, res)
        return res

    # ---------------------------------------------------------------- stages
    def _decode(self, msg, info) -> _Frame:
        rgb = to_rgb_float(msg, self.config.max_image_pixels)
        camera = camera_from_info(info, rgb.shape[0], rgb.shape[1], self.config.rectified)
        return _Frame(msg.header, _stamp_ns(msg.header), rgb, camera)

    def _check_stamp(self, stamp: int, res: PipelineResult) -> bool:
        """True when the sequence restarts here (first frame or a jump)."""
        last, self._last_stamp = self._last_stamp, stamp
        if last is None:
            return True
        dt = (stamp - last) * 1e-9
        if abs(dt) > self.config.max_stamp_jump:
            res.notes.append(f'stamp_jump: stamp jumped by {dt:+.3f} s, sequence reset')
            self._prev = None
            return True
        if dt <= 0:
            self._prev = None
            what = 'duplicate stamp (the same as the previous input)' if dt == 0 else \
                f'stamp {dt * 1e3:+.1f} ms after the previous one'
            raise InputError('stamp_out_of_order', f'{what}: sequence reset')
        return False

    def _encode(self, frame: _Frame):
        device = getattr(self.matcher, 'device', 'cpu')
        x = torch.from_numpy(frame.rgb).permute(2, 0, 1)[None].to(device)
        with torch.inference_mode():
            return self.matcher.encode(x)

    def _run(self, a: _Frame, b: _Frame, wanted: set, res: PipelineResult) -> None:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if a.feats is None:
                a.feats = self._encode(a)
            if b.feats is None:
                b.feats = self._encode(b)
            preds = self.matcher.match_features(a.feats, b.feats)
            grid = {k: preds[k + '_AB'][0].float() for k in ('warp', 'overlap', 'covariance')}
        res.timings['model'] = res.timings.get('model', 0.0) + time.perf_counter() - t0

        t0 = time.perf_counter()
        dense = self._dense(grid, a.hw, b.hw) if wanted & DENSE_OUTPUTS else None
        if dense is not None:
            self._dense_messages(dense, a, b, wanted, res)
        res.timings['dense'] = time.perf_counter() - t0

        t0 = time.perf_counter()
        samples = self._samples(grid, a.hw, b.hw) if wanted & SAMPLE_OUTPUTS else None
        if samples is not None and wanted & {'matches'}:
            res.messages['matches'] = self._matches_msg(samples, a, b)
        if wanted & POSE_OUTPUTS:
            self._pose(samples, a, b, wanted, res)
        res.timings['pose'] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self._viz(dense, samples, a, b, wanted, res)
        res.timings['viz'] = time.perf_counter() - t0

    def _valid(self, warp_px, certainty, hw_b):
        """certainty >= threshold and the warp inside B (pixel edges, OpenCV convention)."""
        h, w = hw_b
        x, y = warp_px[..., 0], warp_px[..., 1]
        with np.errstate(invalid='ignore'):
            return ((certainty >= self.config.certainty_threshold)
                    & (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5))

    def _dense(self, grid, hw_a, hw_b) -> dict:
        """Model grid -> A's resolution: warp (B px), certainty, covariance (px^2 of B)."""
        ho, wo = grid['warp'].shape[:2]
        cov = grid['covariance']
        stack = torch.cat([grid['warp'], grid['overlap'], cov[..., 0, 0:1], cov[..., 0, 1:2],
                           cov[..., 1, 1:2]], dim=-1).permute(2, 0, 1)[None]
        up = F.interpolate(stack, size=hw_a, mode='bilinear', align_corners=False)[0]
        up = up.permute(1, 2, 0)
        warp_px = geometry.to_pixel_coordinates(up[..., :2], *hw_b).cpu().numpy()
        cov = geometry.rescale_covariance(up[..., [3, 4, 4, 5]].reshape(*hw_a, 2, 2),
                                          ho, wo, *hw_b)
        cov3 = cov.reshape(*hw_a, 4)[..., [0, 1, 3]].cpu().numpy()
        certainty = np.clip(up[..., 2].cpu().numpy(), 0.0, 1.0)
        invalid = ~self._valid(warp_px, certainty, hw_b)
        warp_px[invalid] = np.nan
        cov3[invalid] = np.nan
        return {'warp': warp_px.astype(np.float32), 'certainty': certainty.astype(np.float32),
                'covariance': cov3.astype(np.float32)}

    def _dense_messages(self, dense, a: _Frame, b: _Frame, wanted, res) -> None:
        for key, enc in (('warp', '32FC2'), ('certainty', '32FC1'), ('covariance', '32FC3')):
            if key in wanted:
                res.messages[key] = numpy_to_imgmsg(dense[key], enc, a.header)
        if 'disparity' in wanted and self.config.mode == 'stereo':
            P = b.camera.P
            if P is None or P[0, 0] == 0:
                res.notes.append('no_projection: right camera_info has no projection matrix P, '
                                 'no disparity')
            else:
                res.messages['disparity'] = self._disparity_msg(dense['warp'], a, P)

    @staticmethod
    def _disparity_msg(warp_px, a: _Frame, P_right):
        from sensor_msgs.msg import RegionOfInterest
        from stereo_msgs.msg import DisparityImage
        h, w = a.hw
        disparity = (np.arange(w, dtype=np.float32)[None, :] - warp_px[..., 0])
        finite = disparity[np.isfinite(disparity)]
        msg = DisparityImage(header=a.header, f=float(P_right[0, 0]),
                             t=float(-P_right[0, 3] / P_right[0, 0]),
                             valid_window=RegionOfInterest(x_offset=0, y_offset=0, height=h,
                                                           width=w),
                             min_disparity=float(finite.min()) if finite.size else 0.0,
                             max_disparity=float(finite.max()) if finite.size else 0.0,
                             delta_d=DISPARITY_DELTA_D)
        msg.image = numpy_to_imgmsg(disparity.astype(np.float32), '32FC1', a.header)
        return msg

    def _samples(self, grid, hw_a, hw_b) -> dict:
        """Sampled matches on the model grid, in OpenCV px of the full images."""
        ho, wo = grid['warp'].shape[:2]
        pa = geometry.to_pixel_coordinates(
            geometry.normalized_grid(1, ho, wo, device=grid['warp'].device)[0], *hw_a)
        pb = geometry.to_pixel_coordinates(grid['warp'], *hw_b)
        cov = geometry.rescale_covariance(grid['covariance'], ho, wo, *hw_b)
        pa, pb = pa.reshape(-1, 2).cpu().numpy(), pb.reshape(-1, 2).cpu().numpy()
        cov = cov.reshape(-1, 2, 2).cpu().numpy()
        certainty = grid['overlap'].reshape(-1).clamp(0, 1).cpu().numpy()
        idx = np.flatnonzero(self._valid(pb, certainty, hw_b))
        idx = idx[balanced_sample(pa[idx], certainty[idx], self.config.num_samples,
                                  self._rng, hw_a)]
        return {'points_a': pa[idx], 'points_b': pb[idx], 'certainty': certainty[idx],
                'cov_b': cov[idx]}

    @staticmethod
    def _matches_msg(s, a: _Frame, b: _Frame):
        from romav2_ros.msg import SampledMatches
        n = len(s['certainty'])
        return SampledMatches(
            header=a.header, stamp_b=b.header.stamp, frame_id_b=b.header.frame_id,
            width_a=a.hw[1], height_a=a.hw[0], width_b=b.hw[1], height_b=b.hw[0],
            points_a=s['points_a'].astype(np.float32).ravel(),
            points_b=s['points_b'].astype(np.float32).ravel(),
            certainty=s['certainty'].astype(np.float32),
            covariance_a=np.zeros(4 * n, np.float32),
            covariance_b=s['cov_b'].astype(np.float32).ravel())

    def _pose(self, s, a: _Frame, b: _Frame, wanted, res) -> None:
        if a.camera.K is None or b.camera.K is None:
            res.notes.append('uncalibrated: camera_info K is all zero, no relative pose')
            return
        est = estimate_relative_pose(
            s['points_a'], s['points_b'], a.camera.K, b.camera.K, a.camera.D, b.camera.D,
            a.camera.model, b.camera.model, cov_b=s['cov_b'],
            ransac_threshold_px=self.config.ransac_threshold_px)
        if est is None:
            res.notes.append(f'pose_failed: no essential matrix from {len(s["certainty"])} '
                             f'matches')
            return
        from geometry_msgs.msg import Point, PoseWithCovariance, PoseWithCovarianceStamped, \
            Quaternion
        from romav2_ros.msg import RelativePose
        from std_msgs.msg import Header
        q = est.quaternion_xyzw
        pose = PoseWithCovariance()
        pose.pose.position = Point(x=float(est.t[0]), y=float(est.t[1]), z=float(est.t[2]))
        pose.pose.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                           w=float(q[3]))
        pose.covariance = est.covariance.ravel().astype(np.float64)
        if 'relative_pose' in wanted:
            header = Header(stamp=a.header.stamp, frame_id=b.header.frame_id)
            res.messages['relative_pose'] = PoseWithCovarianceStamped(header=header, pose=pose)
        if 'relative_pose_info' in wanted:
            res.messages['relative_pose_info'] = RelativePose(
                header=a.header, stamp_b=b.header.stamp, frame_id_b=b.header.frame_id,
                pose=pose, num_matches=est.num_matches, num_inliers=est.num_inliers,
                scale_observable=est.scale_observable,
                mean_epipolar_error=est.mean_epipolar_error)

    def _viz(self, dense, samples, a: _Frame, b: _Frame, wanted, res) -> None:
        if not wanted & set(VIZ_OUTPUTS):
            return
        rgb_a, rgb_b = ((f.rgb * 255 + 0.5).astype(np.uint8) for f in (a, b))
        images = {}
        if 'matches_viz' in wanted:
            images['matches_viz'] = visualization.draw_matches(
                rgb_a, rgb_b, samples['points_a'], samples['points_b'], samples['certainty'],
                self.config.viz_max_matches)
        if 'warp_viz' in wanted:
            images['warp_viz'] = visualization.warp_visualization(
                rgb_a, rgb_b, dense['warp'], dense['certainty'])
        if 'covariance_viz' in wanted:
            images['covariance_viz'] = visualization.covariance_heatmap(
                *np.moveaxis(dense['covariance'], -1, 0))
        for key, img in images.items():
            res.messages[key] = numpy_to_imgmsg(img, 'rgb8', a.header)
