"""From synchronised input messages to output messages: shared by the node and the bag replay.

No rclpy node lives here: messages in, messages out. The caller says which outputs it wants
(the node: topics with subscribers), and only those are computed. Stages: decode
(``frames.py``) -> encode + match (the matcher, batched) -> numeric post-processing
(``romav2_core``: ``dense``, ``stereo``, ``pose``, ``sampling``) -> messages (``messages.py``).

Pairs (A is the image the dense outputs are indexed by):

* ``stereo``: A = left, B = right;
* ``sequential``: A = frame t, B = frame t-1 (each frame is encoded once; its features are kept
  for the next pair);
* ``stereo_odometry``: the stereo pair (left_t, right_t) gives the stereo outputs and the
  depth, the temporal pair (left_t, left_t-1) the matches, the metric pose and the odometry;
  both are matched as one batch and left_t's features serve the next set too.

Each set is processed with one snapshot of :class:`PipelineConfig` (parameter changes apply
between sets, never inside one). :meth:`MatchingPipeline.process_batch` runs several sets
through the model as one batch (``romav2-replay --batch``) with the same outputs as one at a
time: sampling draws from a generator seeded by ``seed`` and A's stamp, not from a stream.

Output keys (the node's topic names under ``~/``; all with A's header unless noted): see
:data:`OUTPUTS` and README.md's topic tables.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from romav2_core import dense as dense_ops
from romav2_core import visualization
from romav2_core.interface import DenseMatcher, cat_features
from romav2_core.odometry import Odometry, estimate_metric_pose
from romav2_core.pose import estimate_relative_pose
from romav2_core.sampling import balanced_indices
from romav2_core.stereo import RectifiedStereo, RectificationHealth, baseline_angle_deg, \
    vertical_disparity
from romav2_core.transfer import ImageUploader, StageClock
from romav2_ros import messages
from romav2_ros.frames import Frame, decode, projection
from romav2_ros.image_conversion import MAX_IMAGE_PIXELS, InputError, numpy_to_imgmsg, rgb8

__all__ = ['InputError', 'PipelineConfig', 'PipelineResult', 'MatchingPipeline', 'OUTPUTS',
           'MODES', 'VIZ_OUTPUTS', 'mode_outputs']

MODES = ('stereo', 'sequential', 'stereo_odometry')
OUTPUTS = ('warp', 'certainty', 'covariance', 'disparity', 'depth', 'depth_stddev', 'points2',
           'matches', 'relative_pose', 'relative_pose_info', 'odometry', 'matches_viz',
           'warp_viz', 'covariance_viz')
VIZ_OUTPUTS = ('matches_viz', 'warp_viz', 'covariance_viz')
#: Outputs of a rectified stereo pair (stereo mode only, rectified inputs only).
STEREO_OUTPUTS = {'disparity', 'depth', 'depth_stddev', 'points2'}
#: Outputs that need the model grid upsampled to A's resolution.
DENSE_OUTPUTS = {'warp', 'certainty', 'covariance', 'warp_viz', 'covariance_viz'} | \
    STEREO_OUTPUTS
#: Outputs that need sampled matches.
SAMPLE_OUTPUTS = {'matches', 'relative_pose', 'relative_pose_info', 'matches_viz'}
POSE_OUTPUTS = {'relative_pose', 'relative_pose_info'}
#: ``wanted`` may also hold ``'tf'``: the odometry as a TransformStamped (stereo_odometry).
TF = 'tf'
#: Every n-th row and column of model-grid cells used by the rectification check when no
#: sampled output needs the whole grid (a 320 x 320 grid: 6400 matches, plenty for a median).
HEALTH_STRIDE = 4
#: Smallest disparity (px) whose depth is used for the metric pose: below it the depth's
#: first-order uncertainty stops being meaningful (``stereo.py``).
MIN_DISPARITY_PX = 2.0


def mode_outputs(mode: str) -> tuple[str, ...]:
    """The outputs published in ``mode``, in :data:`OUTPUTS` order."""
    if mode == 'stereo_odometry':
        return OUTPUTS
    return tuple(k for k in OUTPUTS if k != 'odometry' and
                 (mode == 'stereo' or k not in STEREO_OUTPUTS))


@dataclass(frozen=True)
class PipelineConfig:
    """Processing options (the node's runtime parameters of the same names); immutable, so a
    set is processed with one consistent snapshot."""

    mode: str = 'stereo'                 # one of MODES
    certainty_threshold: float = 0.05    # below: warp/covariance/disparity NaN, not sampled
    num_samples: int = 2000              # matches sampled for 'matches' and the pose
    ransac_threshold_px: float = 1.0     # essential-matrix inlier threshold, px
    rectified: bool = True               # True: use P (no distortion); False: K + D
    max_stamp_jump: float = 5.0          # s; a larger gap between frames resets the sequence
    viz_max_matches: int = 200           # lines drawn in 'matches_viz'
    seed: int = 0                        # sampling seed (with A's stamp: reproducible)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger inputs: InputError 'too_large'
    points_organized: bool = True        # points2: H x W with NaN, else valid points only
    points_stride: int = 1               # points2: every n-th row and column
    odom_frame: str = 'odom'             # stereo_odometry: the odometry's fixed frame

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode={self.mode!r}: one of {MODES}')

    def replace(self, **changes) -> 'PipelineConfig':
        return dataclasses.replace(self, **changes)


@dataclass
class PipelineResult:
    messages: dict = field(default_factory=dict)     # output key -> ROS message
    timings: dict = field(default_factory=dict)      # stage -> seconds
    notes: list = field(default_factory=list)        # 'code: why an output is missing'
    paired: bool = True                              # False: a sequence's first frame
    health: Optional[RectificationHealth] = None     # stereo on rectified inputs
    transform: Any = None                            # stereo_odometry: TransformStamped
    odometry_state: Optional[str] = None             # stereo_odometry: OK / LOST / RESET
    odometry_quality: dict = field(default_factory=dict)   # inlier ratio, reprojection error


@dataclass
class _Job:
    """One set on its way through the model: its result and the pairs it needs matched."""

    cfg: PipelineConfig
    res: PipelineResult
    pairs: dict                      # role ('stereo' | 'temporal') -> (Frame A, Frame B)
    grids: dict = field(default_factory=dict)   # role -> model outputs of that pair


class MatchingPipeline:
    """Decode -> match -> post-process -> messages, for stereo pairs or an image sequence."""

    def __init__(self, matcher: DenseMatcher, config: PipelineConfig):
        self.matcher = matcher
        #: Replaced (never mutated) to change parameters: read once per set.
        self.config = config
        device = getattr(matcher, 'device', 'cpu')
        self._upload = ImageUploader(device)
        self._clock = StageClock(device)
        self._prev: Optional[Frame] = None
        self._last_stamp: Optional[int] = None
        self._odometry = Odometry()

    def reset(self) -> None:
        """Forget the previous frame and stamp (a sequence, and an odometry segment,
        restarts with the next frame)."""
        self._restart()
        self._last_stamp = None

    def _restart(self) -> None:
        self._prev = None
        self._odometry.reset()

    # ---------------------------------------------------------------- entry points
    def process(self, msgs: tuple, wanted: set) -> PipelineResult:
        """One synchronised set (stereo: left, left_info, right, right_info; sequential:
        image, info); raises InputError for bad input. ``paired`` is False for a sequence's
        first frame (nothing to match yet); its ``notes`` still say why (e.g. a stamp jump)."""
        out = self.process_batch([msgs], wanted)[0]
        if isinstance(out, InputError):
            raise out
        return out

    def process_batch(self, sets: list, wanted: set) -> list:
        """Several sets in arrival order through the model as one batch: per set a
        PipelineResult, or the InputError that refused it (the others go on)."""
        outcomes, jobs = [], []
        for msgs in sets:
            cfg = self.config
            res = PipelineResult()
            try:
                with self._clock.stage('decode', res.timings):
                    pairs = self._prepare(cfg, msgs, res)
            except InputError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(res)
            if pairs:
                jobs.append(_Job(cfg, res, pairs))
            else:
                res.paired = False
        if jobs:
            self._infer(jobs)
            for job in jobs:
                self._finish(job, wanted)
        return outcomes

    # ---------------------------------------------------------------- decode and pair
    def _prepare(self, cfg: PipelineConfig, msgs: tuple, res: PipelineResult) -> dict:
        """Decoded frames of one set and the pairs to match ({} for a first frame)."""
        if cfg.mode == 'sequential':
            image, info = msgs
            a = decode(image, info, cfg.max_image_pixels)
            restarted = self._check_stamp(cfg, a.stamp_ns, res)
            prev, self._prev = self._prev, a
            return {} if prev is None or restarted else {'temporal': (a, prev)}
        left, left_info, right, right_info = msgs
        try:
            a = decode(left, left_info, cfg.max_image_pixels)
            b = decode(right, right_info, cfg.max_image_pixels)
            if a.hw != b.hw:
                raise InputError('size_mismatch', f'left {a.hw[1]}x{a.hw[0]} and right '
                                                  f'{b.hw[1]}x{b.hw[0]} differ')
            restarted = self._check_stamp(cfg, a.stamp_ns, res)
        except InputError:
            self._restart()     # odometry: a bad input ends the segment
            raise
        if cfg.mode == 'stereo':
            return {'stereo': (a, b)}
        prev, self._prev = self._prev, a
        if prev is None or restarted:
            res.odometry_state = 'RESET'      # a segment starts here: nothing to chain yet
            return {'stereo': (a, b)}
        return {'stereo': (a, b), 'temporal': (a, prev)}

    def _check_stamp(self, cfg: PipelineConfig, stamp: int, res: PipelineResult) -> bool:
        """True when the sequence restarts here (first frame or a jump); a stamp not after
        the previous one resets the sequence and raises InputError 'stamp_out_of_order'."""
        last, self._last_stamp = self._last_stamp, stamp
        if last is None:
            return True
        dt = (stamp - last) * 1e-9
        if abs(dt) > cfg.max_stamp_jump:
            res.notes.append(f'stamp_jump: stamp jumped by {dt:+.3f} s, sequence reset')
            self._restart()
            return True
        if dt <= 0:
            self._restart()
            what = 'duplicate stamp (the same as the previous input)' if dt == 0 else \
                f'stamp {dt * 1e3:+.1f} ms after the previous one'
            raise InputError('stamp_out_of_order', f'{what}: sequence reset')
        return False

    # ---------------------------------------------------------------- the model
    def _infer(self, jobs: list) -> None:
        """Encode every frame without features (same-size frames as one batch), then match
        every pair of every job as one batch. The time is shared out among the jobs."""
        timings: dict = {}
        with self._clock.stage('model', timings), torch.inference_mode():
            frames = {id(f): f for job in jobs for pair in job.pairs.values() for f in pair
                      if f.feats is None}
            groups = defaultdict(list)
            for f in frames.values():
                groups[f.image.shape, f.image.dtype.str].append(f)
            for group in groups.values():
                feats = self.matcher.encode(self._upload([f.image for f in group]))
                for i, f in enumerate(group):
                    f.feats = feats[i:i + 1] if len(group) > 1 else feats
            pairs = [(job, role, a, b) for job in jobs for role, (a, b) in job.pairs.items()]
            preds = self.matcher.match_features(cat_features([a.feats for _, _, a, _ in pairs]),
                                                cat_features([b.feats for _, _, _, b in pairs]))
            for i, (job, role, _, _) in enumerate(pairs):
                job.grids[role] = {k: preds[f'{k}_AB'][i] for k in
                                   ('warp', 'overlap', 'covariance')}
        for job in jobs:
            job.res.timings['model'] = job.res.timings.get('model', 0.0) + \
                timings['model'] / len(jobs)

    # ---------------------------------------------------------------- post-processing
    def _finish(self, job: _Job, wanted: set) -> None:
        """Per mode: which pair gives which outputs (module docstring)."""
        cfg, res = job.cfg, job.res
        if cfg.mode == 'stereo':
            a, b = job.pairs['stereo']
            grid = job.grids['stereo']
            with self._clock.stage('dense', res.timings):
                dense = self._dense(cfg, grid, a, b, wanted, res)
                stereo = self._stereo_rig(cfg, a, b, res, bool(wanted & STEREO_OUTPUTS))
                if stereo is not None and wanted & STEREO_OUTPUTS:
                    self._stereo_outputs(cfg, stereo, dense, a, wanted, res)
            with self._clock.stage('pose', res.timings):
                sampled = bool(wanted & SAMPLE_OUTPUTS)
                # the health check alone needs only a sparse grid of the matches
                matches = self._grid(cfg, grid, a, b, 1 if sampled else HEALTH_STRIDE)
                if stereo is not None:
                    ok = matches.valid
                    res.health = vertical_disparity(matches.points_a[ok], matches.points_b[ok])
                samples = self._sample(cfg, matches, a)[0] if sampled else None
                self._matches_out(samples, a, b, wanted, res)
                if wanted & POSE_OUTPUTS:
                    self._two_view_pose(cfg, samples, a, b, stereo, wanted, res)
        elif cfg.mode == 'sequential':
            a, b = job.pairs['temporal']
            grid = job.grids['temporal']
            with self._clock.stage('dense', res.timings):
                dense = self._dense(cfg, grid, a, b, wanted, res)
            with self._clock.stage('pose', res.timings):
                samples = self._sample(cfg, self._grid(cfg, grid, a, b), a)[0] \
                    if wanted & SAMPLE_OUTPUTS else None
                self._matches_out(samples, a, b, wanted, res)
                if wanted & POSE_OUTPUTS:
                    self._two_view_pose(cfg, samples, a, b, None, wanted, res)
        else:
            dense, samples, (a, b) = self._finish_odometry(job, wanted)
        with self._clock.stage('viz', res.timings):
            self._viz(cfg, dense, samples, a, b, wanted, res)

    def _finish_odometry(self, job: _Job, wanted: set) -> tuple:
        """stereo_odometry: stereo outputs from (left_t, right_t); matches, metric pose and
        odometry from (left_t, left_t-1), with 3D points from the stereo depth of left_t.
        Returns what the pictures need: (dense, samples, (A, B)) of the temporal pair (the
        stereo pair's on a segment's first frame)."""
        cfg, res = job.cfg, job.res
        left, right = job.pairs['stereo']
        temporal = job.pairs.get('temporal')
        with self._clock.stage('dense', res.timings):
            stereo = self._stereo_rig(cfg, left, right, res, True)
            if stereo is not None and wanted & STEREO_OUTPUTS:
                s_dense = dense_ops.upsample(*self._grid_tensors(job.grids['stereo']),
                                             left.hw, right.hw, cfg.certainty_threshold)
                self._stereo_outputs(cfg, stereo, s_dense, left, wanted, res)
            dense = self._dense(cfg, job.grids['temporal'], *temporal, wanted, res) \
                if temporal else None
        samples = None
        with self._clock.stage('pose', res.timings):
            s_matches = self._grid(cfg, job.grids['stereo'], left, right)
            if stereo is not None:
                ok = s_matches.valid
                res.health = vertical_disparity(s_matches.points_a[ok], s_matches.points_b[ok])
            if temporal is None:
                return None, None, (left, right)
            a, b = temporal
            t_matches = self._grid(cfg, job.grids['temporal'], a, b)
            if stereo is None:    # noted by _stereo_rig: no depth, so no metric pose
                self._odometry.reset()
                res.odometry_state = 'LOST'
            else:
                samples = self._metric_pose(cfg, stereo, s_matches, t_matches, a, b, wanted,
                                            res)
        return dense, samples, (a, b)

    def _metric_pose(self, cfg, stereo, s_matches, t_matches, a: Frame, b: Frame, wanted,
                     res) -> Optional[tuple]:
        """PnP of left_t's stereo points against their matches in left_t-1, then the
        odometry step. Cells of one output grid: the stereo and temporal matches of a cell
        start from the same pixel of left_t."""
        disparity = s_matches.points_a[:, 0] - s_matches.points_b[:, 0] - stereo.cx_offset
        var_disparity = s_matches.cov_b[:, 0, 0]        # the left pixel is exact
        usable = s_matches.valid & t_matches.valid & (disparity >= MIN_DISPARITY_PX) & \
            np.isfinite(var_disparity) & (var_disparity > 0)
        samples, idx = self._sample(cfg, t_matches, a, usable)
        self._matches_out(samples, a, b, wanted, res)
        est = estimate_metric_pose(samples[0], disparity[idx], var_disparity[idx], samples[1],
                                   samples[3], a.camera.rectified_K, b.camera.rectified_K,
                                   stereo.f * stereo.baseline, cfg.ransac_threshold_px)
        if est is None:
            res.notes.append(f'pose_failed: no metric pose from {len(idx)} matches with '
                             f'stereo depth; odometry segment ends')
            self._odometry.reset()
            res.odometry_state = 'LOST'
            return samples
        est = est.in_camera_frames(a.camera.R, b.camera.R)
        step = self._odometry.step(est, (a.stamp_ns - b.stamp_ns) * 1e-9)
        res.odometry_state = 'OK'
        res.odometry_quality = {'inlier_ratio': est.num_inliers / max(est.num_matches, 1),
                                'mean_reprojection_error_px': est.mean_reprojection_error,
                                'segment': step.segment}
        if 'relative_pose' in wanted:
            res.messages['relative_pose'] = messages.relative_pose(est, b.header)
        if 'relative_pose_info' in wanted:
            res.messages['relative_pose_info'] = messages.relative_pose_info(est, a.header,
                                                                            b.header)
        if 'odometry' in wanted:
            res.messages['odometry'] = messages.odometry(step, a.header, cfg.odom_frame)
        if 'tf' in wanted:
            res.transform = messages.transform(step, a.header, cfg.odom_frame)
        return samples

    @staticmethod
    def _grid_tensors(grid: dict) -> tuple:
        return grid['warp'], grid['overlap'], grid['covariance']

    def _dense(self, cfg, grid, a: Frame, b: Frame, wanted: set, res):
        """The pair's dense outputs (and their messages) when any dense output is wanted."""
        if not wanted & DENSE_OUTPUTS:
            return None
        dense = dense_ops.upsample(*self._grid_tensors(grid), a.hw, b.hw,
                                   cfg.certainty_threshold)
        for key, enc in (('warp', '32FC2'), ('certainty', '32FC1'), ('covariance', '32FC3')):
            if key in wanted:
                res.messages[key] = numpy_to_imgmsg(getattr(dense, key), enc, a.header)
        return dense

    def _grid(self, cfg, grid, a: Frame, b: Frame, stride: int = 1) -> dense_ops.GridMatches:
        return dense_ops.grid_matches(*self._grid_tensors(grid), a.hw, b.hw,
                                      cfg.certainty_threshold, stride)

    @staticmethod
    def _matches_out(samples, a: Frame, b: Frame, wanted: set, res) -> None:
        if samples is not None and 'matches' in wanted:
            res.messages['matches'] = messages.sampled_matches(*samples, a.header, b.header,
                                                               a.hw, b.hw)

    @staticmethod
    def _stereo_rig(cfg: PipelineConfig, a: Frame, b: Frame, res: PipelineResult,
                    note: bool) -> Optional[RectifiedStereo]:
        """The rectified rig of a stereo pair, or None when it has none (with a note when
        ``note``: stereo outputs were wanted)."""
        why = None
        if not cfg.rectified:
            why = 'not_rectified: rectified:=false, and disparity, depth and points need ' \
                  'rectified stereo images'
        elif a.camera is None or b.camera is None or a.camera.P is None or b.camera.P is None:
            why = 'no_projection: left or right camera_info has no projection matrix P'
        else:
            try:
                return RectifiedStereo(a.camera.P, b.camera.P, a.camera.R, b.camera.R)
            except ValueError as exc:
                why = f'no_projection: {exc}'
        if note:
            res.notes.append(f'{why}; no stereo geometry (disparity, depth, points, metric '
                             f'pose)')
        return None

    @staticmethod
    def _stereo_outputs(cfg: PipelineConfig, stereo: RectifiedStereo,
                        dense: dense_ops.DenseMatches, a: Frame, wanted: set,
                        res: PipelineResult) -> None:
        disparity = stereo.disparity(dense.warp[..., 0])
        if 'disparity' in wanted:
            res.messages['disparity'] = messages.disparity_image(disparity, a.header, stereo)
        if not wanted & {'depth', 'depth_stddev', 'points2'}:
            return
        depth = stereo.depth(disparity)
        if 'depth' in wanted:
            res.messages['depth'] = numpy_to_imgmsg(depth, '32FC1', a.header)
        if 'depth_stddev' in wanted:
            res.messages['depth_stddev'] = numpy_to_imgmsg(
                stereo.depth_stddev(depth, dense.covariance[..., 0]), '32FC1', a.header)
        if 'points2' in wanted:
            res.messages['points2'] = messages.point_cloud(
                stereo.points(depth), rgb8(a.image), a.header, cfg.points_organized,
                cfg.points_stride)

    @staticmethod
    def _sample(cfg: PipelineConfig, matches: dense_ops.GridMatches, a: Frame,
                usable: Optional[np.ndarray] = None) -> tuple:
        """(points_a, points_b, certainty, cov_b) of ``num_samples`` grid matches among the
        ``usable`` ones (default: the valid ones), drawn with a generator seeded by ``seed``
        and A's stamp; and their grid indices."""
        idx = np.flatnonzero(matches.valid if usable is None else usable)
        rng = np.random.default_rng([cfg.seed, a.stamp_ns])
        idx = idx[balanced_indices(matches.points_a[idx], matches.certainty[idx],
                                   cfg.num_samples, rng, a.hw)]
        return (matches.points_a[idx], matches.points_b[idx], matches.certainty[idx],
                matches.cov_b[idx]), idx

    @staticmethod
    def _two_view_pose(cfg: PipelineConfig, samples: tuple, a: Frame, b: Frame,
                       stereo: Optional[RectifiedStereo], wanted: set,
                       res: PipelineResult) -> None:
        """Essential-matrix pose (direction of t only) between the named optical frames."""
        proj_a, proj_b = projection(a, cfg.rectified), projection(b, cfg.rectified)
        if proj_a is None or proj_b is None:
            res.notes.append('uncalibrated: camera_info K is all zero, no relative pose')
            return
        (K_a, D_a, model_a, R_a), (K_b, D_b, model_b, R_b) = proj_a, proj_b
        points_a, points_b, _, cov_b = samples
        est = estimate_relative_pose(points_a, points_b, K_a, K_b, D_a, D_b, model_a, model_b,
                                     cov_b=cov_b, ransac_threshold_px=cfg.ransac_threshold_px)
        if est is None:
            res.notes.append(f'pose_failed: no essential matrix from {len(points_a)} matches')
            return
        if stereo is not None and res.health is not None:
            res.health = dataclasses.replace(res.health,
                                             baseline_angle_deg=baseline_angle_deg(est.t, stereo))
        est = est.in_camera_frames(R_a, R_b)
        if 'relative_pose' in wanted:
            res.messages['relative_pose'] = messages.relative_pose(est, b.header)
        if 'relative_pose_info' in wanted:
            res.messages['relative_pose_info'] = messages.relative_pose_info(est, a.header,
                                                                            b.header)

    @staticmethod
    def _viz(cfg: PipelineConfig, dense, samples, a: Frame, b: Frame, wanted: set,
             res: PipelineResult) -> None:
        if not wanted & set(VIZ_OUTPUTS):
            return
        rgb_a, rgb_b = rgb8(a.image), rgb8(b.image)
        images = {}
        if 'matches_viz' in wanted:
            images['matches_viz'] = visualization.draw_matches(
                rgb_a, rgb_b, samples[0], samples[1], samples[2], cfg.viz_max_matches)
        if 'warp_viz' in wanted:
            images['warp_viz'] = visualization.warp_visualization(rgb_a, rgb_b, dense.warp,
                                                                  dense.certainty)
        if 'covariance_viz' in wanted:
            images['covariance_viz'] = visualization.covariance_heatmap(
                *np.moveaxis(dense.covariance, -1, 0))
        for key, img in images.items():
            res.messages[key] = numpy_to_imgmsg(img, 'rgb8', a.header)
