"""The node's three modes as strategies over the pipeline's stages (``pipeline.py``).

For one synchronised set a mode says:

* :meth:`Mode.decode` (the decode stage, any thread, no state): the messages as frames;

and then, in arrival order:

* :meth:`Mode.prepare` (model stage): choose the pairs to match (role -> (A, B)), keeping what
  a sequence needs (the previous frame, the keyframe), or :meth:`Mode.refused` for a set whose
  decoding failed;
* :meth:`Mode.after_match` (model stage): what it learns from the match before any pose
  (stereo_odometry: the keyframe decision, ``romav2_core.tracking``);
* :meth:`Mode.products` (on the model's device): the wanted products of the matched pairs
  (``romav2_core.products``), named as :class:`HostProducts` reads them;
* :meth:`Mode.finish` (host stage): poses, odometry and the output messages.

Pairs (A is the image the dense outputs are indexed by): ``stereo``: (left, right);
``sequential``: (frame t, frame t-1); ``stereo_odometry``: (left_t, right_t) for the depth and
(left_t, keyframe) for the motion, whose cells are the same pixels of left_t.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from romav2_core import visualization
from romav2_core.base_frame import CameraMount, step_in_base
from romav2_core.dense import PairGrid
from romav2_core.odometry import MotionModel, estimate_metric_pose
from romav2_core.pose import PoseEstimate, estimate_relative_pose
from romav2_core.products import (PointCloudLayout, Samples, dense_maps, health, metric_usable,
                                  sample_matches, stereo_maps, tracking_shares)
from romav2_core.stereo import RectificationHealth, RectifiedStereo, baseline_angle_deg
from romav2_core.tracking import (KeyframeOdometry, KeyframePolicy, KeyframeSelector,
                                  OdometryStep, Plan, TrackingStats)
from romav2_ros import messages
from romav2_ros.frames import Frame, decode, projection
from romav2_ros.image_conversion import InputError, numpy_to_imgmsg, rgb8

#: Outputs of a rectified stereo pair (stereo and stereo_odometry, rectified inputs only).
STEREO_OUTPUTS = {'disparity', 'depth', 'depth_stddev', 'points2'}
#: Outputs that need sampled matches.
SAMPLE_OUTPUTS = {'matches', 'relative_pose', 'relative_pose_info', 'matches_viz'}
POSE_OUTPUTS = {'relative_pose', 'relative_pose_info'}
VIZ_OUTPUTS = ('matches_viz', 'warp_viz', 'covariance_viz')
#: The dense products each output needs.
DENSE_NEEDS = {'warp': {'warp'}, 'certainty': {'certainty'}, 'covariance': {'covariance'},
               'warp_viz': {'warp', 'certainty'}, 'covariance_viz': {'covariance'}}
#: The stereo products each output needs.
STEREO_NEEDS = {'disparity': {'disparity'}, 'depth': {'depth'},
                'depth_stddev': {'depth_stddev'}, 'points2': {'points'}}
#: Smallest disparity (px) whose depth is used for the metric pose: below it the depth's
#: first-order uncertainty stops being meaningful (``stereo.py``).
MIN_DISPARITY_PX = 2.0
#: ``wanted`` may also hold ``'tf'``: the odometry as a TransformStamped (stereo_odometry).
TF = 'tf'


@dataclass
class SetPlan:
    """One set on its way through the stages: its decoded frames, the pairs to match (and
    frames to encode now that only a later set pairs with), the model outputs of each pair
    once matched, the stereo rig (None: no stereo geometry) and, in stereo_odometry, the
    keyframe it is matched against and the tracking decision."""

    frames: tuple
    pairs: dict
    keep: tuple = ()                                 # frames to encode now for later sets
    rig: Optional[RectifiedStereo] = None
    grids: dict = field(default_factory=dict)       # role -> PairGrid
    reference: object = None                         # stereo_odometry: Keyframe or None
    tracking: Optional[Plan] = None


@dataclass
class HostProducts:
    """The products of one set on the host (``products.py``'s names, views of the staging
    buffer: read them before it is released)."""

    arrays: dict

    def get(self, key: str) -> Optional[np.ndarray]:
        return self.arrays.get(key)

    @property
    def samples(self) -> Optional[Samples]:
        if 'samples' not in self.arrays:
            return None
        return Samples.from_host(self.arrays['samples'], self.arrays['drawn'])

    @property
    def health(self) -> Optional[RectificationHealth]:
        stats = self.arrays.get('health')
        return None if stats is None else RectificationHealth.from_stats(stats)


@contextmanager
def timed(res, stage: str):
    """Add the host time of the block to ``res.timings[stage]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        res.timings[stage] = res.timings.get(stage, 0.0) + time.perf_counter() - t0


def needed(table: dict, wanted: set) -> set:
    """The products ``wanted`` outputs need, by ``table`` (DENSE_NEEDS or STEREO_NEEDS)."""
    return set().union(*(table[k] for k in wanted if k in table))


class Mode:
    """A mode's stages (see the module docstring). ``batchable``: the pairs of several sets
    can be matched as one batch (False: each set's pairs depend on the sets before it).
    ``mounts``: the camera mounts for a body-frame odometry (``pipeline.MatchingPipeline``)."""

    batchable = True

    def __init__(self, mounts=None):
        self.mounts = mounts

    def reset(self) -> None:
        """Forget the sequence: the next set starts afresh."""

    def decode(self, cfg, msgs: tuple) -> tuple[Frame, ...]:
        """The set's frames (stereo: left, right; sequential: the image); InputError for bad
        input. Stateless: called off the model stage, for sets that may never reach it."""
        return decode_stereo(cfg, msgs)

    def prepare(self, cfg, frames: tuple, wanted: set, res) -> SetPlan:
        raise NotImplementedError

    def refused(self, exc: InputError) -> None:
        """A set whose decoding failed, in its place in the arrival order (nothing by
        default)."""

    def after_match(self, cfg, plan: SetPlan, res) -> None:
        """The model stage's last word on a matched set (nothing by default)."""

    def products(self, cfg, plan: SetPlan, wanted: set, generator) -> dict:
        raise NotImplementedError

    def finish(self, cfg, plan: SetPlan, host: HostProducts, wanted: set, res) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------ shared pieces
class StampCheck:
    """A sequence's stamp order: a jump over ``max_stamp_jump`` restarts it, a stamp not after
    the previous one is refused (and restarts it)."""

    def __init__(self):
        self.last: Optional[int] = None

    def reset(self) -> None:
        self.last = None

    def check(self, cfg, stamp: int, res) -> Optional[str]:
        """Why the sequence restarts here ('first' frame, stamp 'jump'), or None; InputError
        'stamp_out_of_order' for a stamp not after the previous one."""
        last, self.last = self.last, stamp
        if last is None:
            return 'first'
        dt = (stamp - last) * 1e-9
        if abs(dt) > cfg.max_stamp_jump:
            res.notes.append(f'stamp_jump: stamp jumped by {dt:+.3f} s, sequence reset')
            return 'jump'
        if dt <= 0:
            what = 'duplicate stamp (the same as the previous input)' if dt == 0 else \
                f'stamp {dt * 1e3:+.1f} ms after the previous one'
            raise InputError('stamp_out_of_order', f'{what}: sequence reset')
        return None


def decode_stereo(cfg, msgs: tuple) -> tuple[Frame, Frame]:
    left, left_info, right, right_info = msgs
    a = decode(left, left_info, cfg.max_image_pixels)
    b = decode(right, right_info, cfg.max_image_pixels)
    if a.hw != b.hw:
        raise InputError('size_mismatch', f'left {a.hw[1]}x{a.hw[0]} and right '
                                          f'{b.hw[1]}x{b.hw[0]} differ')
    return a, b


def stereo_rig(cfg, a: Frame, b: Frame, res, note: bool) -> Optional[RectifiedStereo]:
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
        res.notes.append(f'{why}; no stereo geometry (disparity, depth, points, metric pose)')
    return None


def dense_products(grid: PairGrid, wanted: set) -> dict:
    keys = needed(DENSE_NEEDS, wanted)
    return dense_maps(grid, keys) if keys else {}


def stereo_products(cfg, grid: PairGrid, rig: RectifiedStereo, a: Frame, wanted: set) -> dict:
    keys = needed(STEREO_NEEDS, wanted)
    if not keys:
        return {}
    layout = PointCloudLayout(cfg.points_frame, cfg.points_stride, cfg.points_organized)
    return stereo_maps(grid, rig, a.device_image, keys,
                       (cfg.min_disparity, cfg.max_disparity), layout)


def dense_messages(host: HostProducts, a: Frame, wanted: set, res) -> None:
    for key, enc in (('warp', '32FC2'), ('certainty', '32FC1'), ('covariance', '32FC3')):
        if key in wanted:
            res.messages[key] = numpy_to_imgmsg(host.get(key), enc, a.header)


def stereo_messages(cfg, rig: RectifiedStereo, host: HostProducts, a: Frame, wanted: set,
                    res) -> None:
    if 'disparity' in wanted:
        res.messages['disparity'] = messages.disparity_image(
            host.get('disparity'), a.header, rig, (cfg.min_disparity, cfg.max_disparity))
    for key in ('depth', 'depth_stddev'):
        if key in wanted:
            res.messages[key] = numpy_to_imgmsg(host.get(key), '32FC1', a.header)
    if 'points2' in wanted:
        count = host.get('points_count')
        res.messages['points2'] = messages.point_cloud(
            host.get('points'), a.header, cfg.points_organized,
            None if count is None else int(count))


def matches_message(samples: Optional[Samples], a: Frame, b: Frame, wanted: set, res) -> None:
    if samples is not None and 'matches' in wanted:
        res.messages['matches'] = messages.sampled_matches(samples, a.header, b.header, a.hw,
                                                           b.hw)


def pose_messages(est: PoseEstimate, a: Frame, b: Frame, wanted: set, res, **info) -> None:
    if 'relative_pose' in wanted:
        res.messages['relative_pose'] = messages.relative_pose(est, b.header)
    if 'relative_pose_info' in wanted:
        res.messages['relative_pose_info'] = messages.relative_pose_info(est, a.header,
                                                                        b.header, **info)


def two_view_pose(cfg, samples: Samples, a: Frame, b: Frame, wanted: set, res
                  ) -> Optional[PoseEstimate]:
    """Essential-matrix pose (direction of t only) between the named optical frames."""
    proj_a, proj_b = projection(a, cfg.rectified), projection(b, cfg.rectified)
    if proj_a is None or proj_b is None:
        res.notes.append('uncalibrated: camera_info K is all zero, no relative pose')
        return None
    (K_a, D_a, model_a, R_a), (K_b, D_b, model_b, R_b) = proj_a, proj_b
    with timed(res, 'pose'):
        est = estimate_relative_pose(samples.points_a, samples.points_b, K_a, K_b, D_a, D_b,
                                     model_a, model_b, cov_b=samples.cov_b,
                                     ransac_threshold_px=cfg.ransac_threshold_px)
    if est is None:
        res.notes.append(f'pose_failed: no essential matrix from {len(samples)} matches')
        return None
    pose_messages(est.in_camera_frames(R_a, R_b), a, b, wanted, res)
    return est      # between the rectified frames (what the calibration check compares)


def viz(cfg, host: HostProducts, samples: Optional[Samples], a: Frame, b: Frame,
        wanted: set, res) -> None:
    """The pictures whose inputs this set has (a picture without them is absent)."""
    if not wanted & set(VIZ_OUTPUTS):
        return
    with timed(res, 'viz'):
        _draw(cfg, host, samples, a, b, wanted, res)


def _draw(cfg, host: HostProducts, samples: Optional[Samples], a: Frame, b: Frame,
          wanted: set, res) -> None:
    rgb_a, rgb_b = rgb8(a.image), rgb8(b.image)
    images = {}
    if 'matches_viz' in wanted and samples is not None:
        images['matches_viz'] = visualization.draw_matches(
            rgb_a, rgb_b, samples.points_a, samples.points_b, samples.certainty,
            cfg.viz_max_matches)
    if 'warp_viz' in wanted and host.get('warp') is not None:
        images['warp_viz'] = visualization.warp_visualization(rgb_a, rgb_b, host.get('warp'),
                                                              host.get('certainty'))
    if 'covariance_viz' in wanted and host.get('covariance') is not None:
        images['covariance_viz'] = visualization.covariance_heatmap(
            *np.moveaxis(host.get('covariance'), -1, 0))
    for key, img in images.items():
        res.messages[key] = numpy_to_imgmsg(img, 'rgb8', a.header)


# ------------------------------------------------------------------ the modes
class PairMode(Mode):
    """A mode that matches one pair a set (its ``role``): the dense outputs, the sampled
    matches and the two-view pose of that pair, and a stereo rig's outputs when it has one."""

    role = ''

    def products(self, cfg, plan, wanted, generator) -> dict:
        grid, (a, _) = plan.grids[self.role], plan.frames
        out = dense_products(grid, wanted)
        if plan.rig is not None:
            out['health'] = health(grid)
            out.update(stereo_products(cfg, grid, plan.rig, a, wanted))
        if wanted & SAMPLE_OUTPUTS:
            out.update(sample_matches(grid, cfg.num_samples, generator))
        return out

    def finish(self, cfg, plan, host, wanted, res) -> None:
        a, b = plan.frames
        dense_messages(host, a, wanted, res)
        if plan.rig is not None:
            res.health = host.health
            stereo_messages(cfg, plan.rig, host, a, wanted, res)
        samples = host.samples
        matches_message(samples, a, b, wanted, res)
        if wanted & POSE_OUTPUTS and samples is not None:
            est = two_view_pose(cfg, samples, a, b, wanted, res)
            if est is not None and plan.rig is not None and res.health is not None:
                res.health = dataclasses.replace(
                    res.health, baseline_angle_deg=baseline_angle_deg(est.t, plan.rig))
        viz(cfg, host, samples, a, b, wanted, res)


class StereoMode(PairMode):
    """left -> right of one rectified rig; each pair stands alone (no stamp order)."""

    role = 'stereo'

    def prepare(self, cfg, frames, wanted, res) -> SetPlan:
        a, b = frames
        rig = stereo_rig(cfg, a, b, res, bool(wanted & STEREO_OUTPUTS))
        return SetPlan((a, b), {'stereo': (a, b)}, rig=rig)


class SequentialMode(PairMode):
    """frame t -> frame t-1 of one camera; each frame is encoded once (its features serve the
    next pair)."""

    role = 'temporal'

    def __init__(self, mounts=None):
        super().__init__(mounts)
        self._prev: Optional[Frame] = None
        self._stamps = StampCheck()

    def reset(self) -> None:
        self._prev = None
        self._stamps.reset()

    def decode(self, cfg, msgs) -> tuple[Frame]:
        image, info = msgs
        return (decode(image, info, cfg.max_image_pixels),)

    def prepare(self, cfg, frames, wanted, res) -> SetPlan:
        a, = frames
        try:
            restarted = self._stamps.check(cfg, a.stamp_ns, res)
        except InputError:
            self._prev = None
            raise
        prev, self._prev = self._prev, a
        # every frame is encoded on arrival (one image a call, the shape the warm-up runs)
        if prev is None or restarted:
            return SetPlan((a,), {}, keep=(a,))
        return SetPlan((a, prev), {'temporal': (a, prev)})


class StereoOdometryMode(Mode):
    """A stereo camera over time: the stereo outputs of (left_t, right_t), and metric
    odometry from (left_t, keyframe) with left_t's stereo depth (``romav2_core.tracking``).
    Not batchable: the keyframe a set is matched against depends on the sets before it."""

    batchable = False

    def __init__(self, mounts=None):
        super().__init__(mounts)
        self._stamps = StampCheck()
        self.selector = KeyframeSelector()
        self.odometry = KeyframeOdometry()
        self.motion = MotionModel()             # rectified poses against keyframe ids
        self._mount: Optional[tuple] = None     # (camera frame, CameraMount) once known
        self._keyframe_reason = ''              # why the last keyframe was made

    def reset(self) -> None:
        self._stamps.reset()
        self.selector.reset('restart')

    def refused(self, exc: InputError) -> None:
        self.selector.lost_frame()              # the next frame tries the keyframe again

    def prepare(self, cfg, frames, wanted, res) -> SetPlan:
        a, b = frames
        try:
            restarted = self._stamps.check(cfg, a.stamp_ns, res)
        except InputError:                      # stamp_out_of_order
            self.selector.reset('stamp out of order')
            raise
        if restarted == 'jump':
            self.selector.reset('stamp jump')
        rig = stereo_rig(cfg, a, b, res, True)
        if rig is None:
            self.selector.lost_frame()
            return SetPlan((a, b), {'stereo': (a, b)})
        self.selector.policy = policy(cfg)
        reference = self.selector.reference()
        pairs = {'stereo': (a, b)}
        if reference is not None:
            pairs['temporal'] = (a, reference.frame)
        return SetPlan((a, b), pairs, rig=rig, reference=reference)

    def after_match(self, cfg, plan, res) -> None:
        if plan.rig is None:
            return
        shares = tracking_shares(plan.grids['stereo'], plan.grids.get('temporal')).tolist()
        stats = TrackingStats(covisible_share=shares[1], flow=shares[2],
                              stereo_share=shares[0])
        plan.tracking = self.selector.plan(plan.frames[0], stats, plan.reference)

    def products(self, cfg, plan, wanted, generator) -> dict:
        stereo, (a, _) = plan.grids['stereo'], plan.frames
        if plan.rig is None:
            return {}
        out = {'health': health(stereo)}
        out.update(stereo_products(cfg, stereo, plan.rig, a, wanted))
        temporal = plan.grids.get('temporal')
        if temporal is not None:
            out.update(dense_products(temporal, wanted))
        if plan.tracking.tracked:
            usable = metric_usable(stereo, temporal, plan.rig, MIN_DISPARITY_PX)
            out.update(sample_matches(temporal, cfg.num_samples, generator, usable,
                                      (stereo, plan.rig)))
        return out

    def finish(self, cfg, plan, host, wanted, res) -> None:
        a, _ = plan.frames
        stamp_s = a.stamp_ns * 1e-9
        track = plan.tracking
        if plan.rig is None:            # no stereo geometry: this frame cannot be posed
            self._report(self.odometry.unposed(stamp_s), None, None, a, None, cfg, wanted,
                         res)
            return
        res.health = host.health
        stereo_messages(cfg, plan.rig, host, a, wanted, res)
        if track.new_keyframe is not None:
            self._keyframe_reason = track.reason
        if track.segment_start:
            self._report(self.odometry.update(track, None, stamp_s), None, track, a, None, cfg,
                         wanted, res)
            return
        kf = track.reference.frame
        dense_messages(host, a, wanted, res)
        samples = host.samples
        matches_message(samples, a, kf, wanted, res)
        est = None
        if track.tracked:
            with timed(res, 'pose'):
                kf_id = track.reference.id
                est = estimate_metric_pose(samples.points_a, samples.disparity,
                                           samples.var_disparity, samples.points_b,
                                           samples.cov_b, a.camera.rectified_K,
                                           kf.camera.rectified_K, plan.rig.fT,
                                           cfg.ransac_threshold_px,
                                           prior=self.motion.predict(kf_id))
            if est is None:
                self.motion.reset()
                res.notes.append(f'pose_failed: no metric pose from {len(samples)} matches '
                                 f'with stereo depth against keyframe {kf_id}')
            else:
                self.motion.add(kf_id, est.R, est.t)
                est = est.in_camera_frames(a.camera.R, kf.camera.R)
        step = self.odometry.update(track, est, stamp_s, self.selector)
        self._report(step, est, track, a, kf, cfg, wanted, res)
        viz(cfg, host, samples, a, kf, wanted, res)

    def _report(self, step: Optional[OdometryStep], est: Optional[PoseEstimate],
                track: Optional[Plan], a: Frame, b: Optional[Frame], cfg, wanted: set,
                res) -> None:
        """The odometry messages of frame ``a`` (posed against keyframe image ``b``, if any)
        and its tracking state for the diagnostics."""
        if step is None:                 # nothing to report before the odometry started
            res.odometry_state = 'LOST'
            return
        res.odometry_state = step.state
        res.odometry_quality = {'segment': step.segment, 'keyframe': step.keyframe_id,
                                'keyframe_reason': self._keyframe_reason}
        if track is not None:
            res.odometry_quality['frames_since_keyframe'] = track.frames_since_keyframe
        if est is not None:
            res.odometry_quality.update(
                inlier_ratio=est.num_inliers / max(est.num_matches, 1),
                mean_reprojection_error_px=est.mean_reprojection_error,
                seeded_by=est.seeded_by)
            pose_messages(est, a, b, wanted, res, tracking=step)
        elif b is not None and 'relative_pose_info' in wanted:
            res.messages['relative_pose_info'] = messages.no_relative_pose(a.header, b.header,
                                                                          step)
        if not step.publish or not wanted & {'odometry', TF}:
            return
        child = a.header.frame_id
        if cfg.base_frame:
            mount = self._camera_mount(cfg.base_frame, child)
            if mount is None:
                res.notes.append(f'no_base_transform: the pose of {child!r} in '
                                 f'{cfg.base_frame!r} is not known yet (base_to_camera, or '
                                 f'/tf_static); no odometry published for this frame')
                return
            step, child = step_in_base(step, mount), cfg.base_frame
        if 'odometry' in wanted:
            res.messages['odometry'] = messages.odometry(step, a.header.stamp, cfg.odom_frame,
                                                         child)
        if step.state != 'LOST' and TF in wanted:
            res.transform = messages.transform(step, a.header.stamp, cfg.odom_frame, child)

    def _camera_mount(self, base_frame: str, camera_frame: str) -> Optional[CameraMount]:
        """The camera's mount in ``base_frame``, looked up until found, then kept."""
        if self._mount is not None and self._mount[0] == (base_frame, camera_frame):
            return self._mount[1]
        found = None if self.mounts is None else self.mounts.lookup(base_frame, camera_frame)
        if found is None:
            return None
        self._mount = ((base_frame, camera_frame), CameraMount(*found))
        return self._mount[1]


def policy(cfg) -> KeyframePolicy:
    """The keyframe policy of a config snapshot."""
    return KeyframePolicy(overlap=cfg.keyframe_overlap, flow=cfg.keyframe_flow,
                          min_overlap=cfg.tracking_min_overlap,
                          max_lost_frames=cfg.max_lost_frames)


MODE_CLASSES = {'stereo': StereoMode, 'sequential': SequentialMode,
                'stereo_odometry': StereoOdometryMode}
