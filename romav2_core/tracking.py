"""Keyframe tracking for metric stereo odometry: what a frame is matched against, and the
odometry of the frames from their keyframe-relative poses (no ROS, no torch).

A frame-to-frame chain random-walks even when the camera stands still: every step adds its
estimation noise. Here each frame's left image is matched against the current **keyframe**'s
left image and posed relative to it (``odometry.estimate_metric_pose``: the frame's own stereo
points, observed in the keyframe), and the frame's pose is the keyframe's pose composed with
that one estimate. Nothing accumulates between keyframes, so a still camera makes no new
keyframe and does not drift; a new keyframe is made when tracking weakens.

Two halves, so that a node can run the model on frame t+1 while frame t is being posed:

* :class:`KeyframeSelector` (model side) decides everything from what is known right after
  the match, before any pose: the **covisibility** (the share of the frame's model-grid cells
  matched validly into the keyframe, relative to the share of the keyframe's cells that had a
  valid stereo match: 1 at rest, falling as the view moves on) and the **flow** (median
  image motion of the matched cells, as a fraction of the image width). The frame becomes the
  next keyframe when the covisibility drops below ``KeyframePolicy.overlap`` or the flow
  exceeds ``KeyframePolicy.flow``; below ``KeyframePolicy.min_overlap`` it is not tracked at
  all (LOST) and never becomes a keyframe; after ``max_lost_frames`` lost frames in a row the
  next frame with a stereo pair starts a new **segment** as the first keyframe. These inputs
  are deterministic, so the live node and an offline replay of its input choose the same
  keyframes. The one input from the pose side: a keyframe whose own pose failed
  (:meth:`KeyframeSelector.keyframe_failed`) is dropped for its last posed ancestor.
* :class:`KeyframeOdometry` (host side) keeps the keyframes' poses in the odometry frame and
  gives each frame its pose, covariance, twist and tracking state (OK / LOST / RESET).

Conventions (``odometry.py``): poses of the camera's optical frame in the odometry frame
(the camera at the start); 6x6 covariances REP 103 over (x, y, z, rot X, rot Y, rot Z) about
the fixed axes of the frame the pose is expressed in. While tracking is lost the last pose is
held and :data:`LOST_VARIANCE` is added to its covariance's diagonal (unknown motion); a new
segment starts from the last pose with that inflated covariance (REP 105: odom stays
continuous, and its covariance never shrinks across a gap it could not measure).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from romav2_core.odometry import _skew, _spd, compose, twist
from romav2_core.pose import PoseEstimate

#: Variance (m^2 and rad^2) added to the pose covariance's diagonal for motion that was not
#: measured (a lost frame, a new segment): "unknown" to any consumer that weighs by it.
LOST_VARIANCE = 1e4
#: Variance of the twist of a frame whose motion is unknown ((m/s)^2, (rad/s)^2).
UNKNOWN_TWIST_VARIANCE = 1e4


@dataclass(frozen=True)
class KeyframePolicy:
    """When to make a keyframe (see the module docstring); the node parameters
    ``keyframe_overlap``, ``keyframe_flow``, ``tracking_min_overlap``, ``max_lost_frames``."""

    overlap: float = 0.7         # covisibility below it: the frame becomes a keyframe
    flow: float = 0.1            # median flow above it (x image width): a new keyframe
    min_overlap: float = 0.2     # covisibility below it: not tracked (LOST)
    max_lost_frames: int = 5     # lost frames in a row before a new segment starts

    def __post_init__(self):
        if not 0 <= self.min_overlap <= self.overlap <= 1:
            raise ValueError(f'keyframe thresholds need 0 <= min_overlap ({self.min_overlap}) '
                             f'<= overlap ({self.overlap}) <= 1')


@dataclass
class Keyframe:
    """A keyframe as the model side knows it: an id, the frame (opaque here: its image and
    features) and the share of its cells with a valid stereo match (the covisibility's
    reference). ``parent``: the keyframe it was tracked against, kept until its pose is
    known, so that a keyframe whose pose failed can be replaced by its ancestor."""

    id: int
    frame: Any
    stereo_share: float
    parent: Optional['Keyframe'] = None
    posed: bool = False


@dataclass(frozen=True)
class TrackingStats:
    """A frame's match against its keyframe, as the model side measures it."""

    covisible_share: float       # share of the frame's cells matched validly into the keyframe
    flow: float                  # median |x_B - x_A| of those cells / image width
    stereo_share: float          # share of the frame's cells with a valid stereo match


@dataclass(frozen=True)
class Plan:
    """What the model side decided for one frame; travels with the frame to the pose side.

    ``reference``: the keyframe the frame was matched against (None: it starts a segment and
    is its first keyframe, ``new_keyframe``). ``new_keyframe``: the keyframe this frame
    becomes once posed (or None). ``tracked``: a pose is to be estimated (False: LOST, too
    little covisibility). ``covisibility``: relative to the keyframe's stereo share (NaN
    without a reference)."""

    reference: Optional[Keyframe]
    new_keyframe: Optional[Keyframe]
    tracked: bool
    frames_since_keyframe: int
    reason: str = ''             # why this frame became a keyframe / was not tracked
    covisibility: float = float('nan')
    flow: float = float('nan')

    @property
    def segment_start(self) -> bool:
        return self.reference is None


class KeyframeSelector:
    """The model side (see the module docstring). One frame at a time: :meth:`reference`
    (match the frame against it, or start a segment when None), then :meth:`plan`."""

    def __init__(self, policy: KeyframePolicy = KeyframePolicy()):
        self.policy = policy
        self._current: Optional[Keyframe] = None
        self._next_id = 0
        self._lost_run = 0
        self._since = 0
        self._failed: set[int] = set()
        self._lock = threading.Lock()      # feedback arrives from the pose side's thread
        self.restart_reason = 'first frame'

    def reset(self, reason: str) -> None:
        """The next frame starts a new segment (a stamp jump, a jump back in time)."""
        self._current = None
        self.restart_reason = reason

    def lost_frame(self) -> None:
        """A frame that could not even be matched (bad input): it counts as lost."""
        self._lost_run += 1
        self._since += 1

    def keyframe_failed(self, keyframe_id: int) -> None:
        """The pose side could not pose keyframe ``keyframe_id`` (thread-safe)."""
        with self._lock:
            self._failed.add(keyframe_id)

    def reference(self) -> Optional[Keyframe]:
        """The keyframe to match the next frame against. A keyframe that failed (or whose
        unposed ancestor failed) gives way to the last one before it (a new segment when
        there is none); keyframes older than the newest posed one are let go."""
        with self._lock:
            failed, self._failed = self._failed, set()
        chain, kf = [], self._current
        while kf is not None:
            chain.append(kf)
            if kf.posed:                    # nothing older can be needed again
                kf.parent = None
                break
            kf = kf.parent
        for kf in reversed(chain):          # the oldest failure decides
            if kf.id in failed:
                self._current = kf.parent
                if kf.parent is None:
                    self.restart_reason = f'keyframe {kf.id} could not be posed'
                break
        return self._current

    def plan(self, frame, stats: TrackingStats, reference: Optional[Keyframe]) -> Plan:
        """Decide for ``frame`` (matched against ``reference``, :meth:`reference`'s answer;
        ``stats.covisible_share``/``flow`` NaN when there was none)."""
        p = self.policy
        if reference is None:
            return self._start(frame, stats, self.restart_reason)
        covisibility = stats.covisible_share / max(reference.stereo_share, 1e-6)
        self._since += 1
        if covisibility < p.min_overlap:
            self._lost_run += 1
            if self._lost_run > p.max_lost_frames and stats.stereo_share > 0:
                return self._start(frame, stats, f'new segment: {self._lost_run} frames '
                                                 f'without tracking')
            return Plan(reference, None, False, self._since,
                        f'covisibility {covisibility:.2f} < {p.min_overlap:g}', covisibility,
                        stats.flow)
        self._lost_run = 0
        why = ''
        if covisibility < p.overlap:
            why = f'covisibility {covisibility:.2f} < {p.overlap:g}'
        elif stats.flow > p.flow:
            why = f'flow {stats.flow:.3f} > {p.flow:g} of the image width'
        new = self._promote(frame, stats, reference) if why else None
        return Plan(reference, new, True, self._since, why, covisibility, stats.flow)

    def _promote(self, frame, stats: TrackingStats, parent: Optional[Keyframe]) -> Keyframe:
        kf = Keyframe(self._next_id, frame, stats.stereo_share, parent=parent)
        self._next_id += 1
        self._current = kf
        self._since = 0
        return kf

    def _start(self, frame, stats: TrackingStats, reason: str) -> Plan:
        self._lost_run = 0
        kf = self._promote(frame, stats, None)
        kf.posed = True                     # a segment's first pose is given, not estimated
        self.restart_reason = 'first frame'
        return Plan(None, kf, False, 0, reason)


@dataclass
class OdometryStep:
    """A frame's odometry: pose of the camera in the odometry frame, twist in the camera
    frame (``nav_msgs/Odometry``'s child frame), tracking state and keyframe bookkeeping."""

    R: np.ndarray              # [3 x 3] camera orientation in the odometry frame
    p: np.ndarray              # [3] camera position, m
    covariance: np.ndarray     # [6 x 6] REP 103, odometry-frame axes
    linear: np.ndarray         # [3] m/s in the camera frame
    angular: np.ndarray        # [3] rad/s in the camera frame
    twist_covariance: np.ndarray   # [6 x 6]
    state: str                 # OK: posed; LOST: held (inflated); RESET: a segment's start
    segment: int               # 0, 1, ... a new one after every reset
    keyframe_id: int           # the keyframe the pose is relative to (or this frame's own)
    new_keyframe: bool = False
    publish: bool = True       # False: the very first frame (the odometry's origin)


@dataclass
class _Posed:
    """A posed frame: its pose in odom, and its estimate relative to its keyframe."""

    R: np.ndarray
    p: np.ndarray
    covariance: np.ndarray
    stamp_s: float
    keyframe_id: int
    relative: Optional[PoseEstimate] = None     # None: the frame is its keyframe


class KeyframeOdometry:
    """The pose side (see the module docstring): :meth:`update` once per frame, in order."""

    def __init__(self):
        self._keyframes: dict[int, _Posed] = {}
        self._last: Optional[_Posed] = None     # the last posed frame
        self._held: Optional[tuple] = None      # (R, p, covariance) published while lost
        self.segment = -1

    def update(self, plan: Plan, estimate: Optional[PoseEstimate], stamp_s: float,
               selector: Optional[KeyframeSelector] = None) -> OdometryStep:
        """The odometry of a frame planned as ``plan``, with its ``estimate`` relative to
        ``plan.reference`` (None: no pose). ``selector`` hears of keyframes that fail."""
        if plan.segment_start:
            return self._start(plan, stamp_s)
        kf = self._keyframes.get(plan.reference.id)
        if kf is None or estimate is None or not plan.tracked:
            if plan.new_keyframe is not None and selector is not None:
                selector.keyframe_failed(plan.new_keyframe.id)
            return self._lost(plan.reference.id)
        R, p, cov = compose(kf.R, kf.p, kf.covariance, estimate.R, estimate.t,
                            estimate.covariance)
        posed = _Posed(R, p, cov, stamp_s, plan.reference.id, estimate)
        linear, angular, twist_cov = self._twist(posed)
        self._last, self._held = posed, None
        if plan.new_keyframe is not None:
            # the next frame's step starts from this one as its keyframe
            self._last = self._keyframes[plan.new_keyframe.id] = \
                _Posed(R, p, cov, stamp_s, plan.new_keyframe.id)
            plan.new_keyframe.posed = True
            self._forget_before(plan.reference.id)
        return OdometryStep(R, p, cov, linear, angular, twist_cov, 'OK', self.segment,
                            plan.reference.id, new_keyframe=plan.new_keyframe is not None)

    def _forget_before(self, keyframe_id: int) -> None:
        """Only the newest keyframes can be referenced again (a failed keyframe gives way
        to its parent): keep ``keyframe_id`` and later ones."""
        for k in [k for k in self._keyframes if k < keyframe_id]:
            del self._keyframes[k]

    def _start(self, plan: Plan, stamp_s: float) -> OdometryStep:
        self.segment += 1
        kf_id = plan.new_keyframe.id
        if self._last is None:                      # the origin of the odometry frame
            R, p, cov = np.eye(3), np.zeros(3), np.zeros((6, 6))
        else:
            R, p, cov = self._inflated()
        posed = _Posed(R, p, cov, stamp_s, kf_id)
        self._keyframes = {kf_id: posed}
        first = self._last is None
        self._last, self._held = posed, None
        return OdometryStep(R, p, cov, np.zeros(3),
                            np.zeros(3), np.eye(6) * UNKNOWN_TWIST_VARIANCE, 'RESET',
                            self.segment, kf_id, new_keyframe=True, publish=not first)

    def _inflated(self) -> tuple:
        if self._held is None:
            last = self._last
            self._held = (last.R, last.p, last.covariance + LOST_VARIANCE * np.eye(6))
        return self._held

    def unposed(self, stamp_s: float) -> Optional[OdometryStep]:
        """A frame that could not be tracked at all (no stereo geometry): LOST, or None
        before the odometry started."""
        return None if self._last is None else self._lost(self._last.keyframe_id)

    def _lost(self, keyframe_id: int) -> OdometryStep:
        R, p, cov = self._inflated()
        return OdometryStep(R, p, cov, np.zeros(3), np.zeros(3),
                            np.eye(6) * UNKNOWN_TWIST_VARIANCE, 'LOST', self.segment,
                            keyframe_id)

    def _twist(self, posed: _Posed) -> tuple:
        """Velocity from the last posed frame to ``posed`` (across a lost gap: its mean),
        in ``posed``'s camera frame; unknown when the two share no keyframe."""
        last = self._last
        dt = posed.stamp_s - last.stamp_s
        if dt <= 0:
            return np.zeros(3), np.zeros(3), np.eye(6) * UNKNOWN_TWIST_VARIANCE
        est = posed.relative
        if last.relative is None and last.keyframe_id == posed.keyframe_id:
            return twist(est.R, est.t, est.covariance, dt)      # the last frame is the keyframe
        if last.relative is not None and last.keyframe_id == posed.keyframe_id:
            R, t, cov = relative_step(last.relative, est)
            return twist(R, t, cov, dt)
        return np.zeros(3), np.zeros(3), np.eye(6) * UNKNOWN_TWIST_VARIANCE


def relative_step(a: PoseEstimate, b: PoseEstimate) -> tuple:
    """Pose of frame b in frame a, both posed relative to one keyframe (``p_kf = R p + t``):
    ``(R_a^T R_b, R_a^T (t_b - t_a))`` and its covariance about a's axes, first order, the two
    estimates independent."""
    Ra_t = a.R.T
    R, t = Ra_t @ b.R, Ra_t @ (b.t - a.t)
    J_b = np.kron(np.eye(2), Ra_t)
    J_a = np.zeros((6, 6))
    J_a[:3, :3] = -Ra_t
    J_a[:3, 3:] = Ra_t @ _skew(b.t - a.t)
    J_a[3:, 3:] = -Ra_t
    return R, t, _spd(J_b @ b.covariance @ J_b.T + J_a @ a.covariance @ J_a.T)
