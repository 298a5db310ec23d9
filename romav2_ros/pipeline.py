"""From synchronised input messages to output messages: shared by the node and the bag replay.

No rclpy node lives here: messages in, messages out. The caller says which outputs it wants
(the node: topics with subscribers), and only those are computed. Three stages, so that a node
can decode set n+2 and run the model on set n+1 while set n is posed and published:

0. :meth:`MatchingPipeline.decode` (the **decode stage**, any thread, no sequence state): the
   messages as frames (``frames.py``) with the set's parameter snapshot, or the InputError
   that refuses them.
1. :meth:`MatchingPipeline.infer` (the **model stage**, in arrival order): pair (the mode,
   ``modes.py``), encode and match (the matcher, batched),
   then the wanted products on the model's device (``romav2_core.products``: upsampling,
   validity, disparity, depth, points in the message layout, sampled matches), started on
   their way to the host in one copy (``romav2_core.transfer.HostStaging``). On CUDA this
   stage only queues device work; on the CPU the products are computed by stage 2, so the
   model stage's thread is free for the next model call.
2. :meth:`MatchingPipeline.finish` (the **host stage**, in the same order): the products on
   the host, poses (``romav2_core.pose``, ``romav2_core.odometry``), odometry
   (``romav2_core.tracking``) and the messages (``messages.py``).

Modes and their pairs (A is the image the dense outputs are indexed by): see ``modes.py``.
Each set is processed with one snapshot of :class:`PipelineConfig` (parameter changes apply
between sets, never inside one). :meth:`MatchingPipeline.process_batch` runs several sets
through the model as one batch (``romav2-replay --batch``) with the same outputs as one at a
time: sampling draws from a generator seeded by ``seed`` and A's stamp, not from a stream.

Output keys (the node's topic names under ``~/``; all with A's header unless noted): see
:data:`OUTPUTS` and README.md's topic tables.
"""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from romav2_core.dense import PairGrid
from romav2_core.interface import DenseMatcher, cat_features
from romav2_core.stereo import POINT_FRAMES, RectificationHealth
from romav2_core.transfer import DeviceTimer, HostStaging, ImageUploader, Staged
from romav2_ros.image_conversion import MAX_IMAGE_PIXELS, InputError
from romav2_ros.modes import (MODE_CLASSES, STEREO_OUTPUTS, TF, VIZ_OUTPUTS, HostProducts,
                              SetPlan)

__all__ = ['InputError', 'PipelineConfig', 'PipelineResult', 'MatchingPipeline', 'Decoded',
           'Inferred',
           'OUTPUTS', 'MODES', 'VIZ_OUTPUTS', 'mode_outputs', 'TF']

MODES = tuple(MODE_CLASSES)
OUTPUTS = ('warp', 'certainty', 'covariance', 'disparity', 'depth', 'depth_stddev', 'points2',
           'matches', 'relative_pose', 'relative_pose_info', 'odometry', 'matches_viz',
           'warp_viz', 'covariance_viz')
ODOMETRY_OUTPUTS = {'odometry', TF}


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
    ransac_threshold_px: float = 1.0     # pose inlier threshold, px
    rectified: bool = True               # True: use P (no distortion); False: K + D
    max_stamp_jump: float = 5.0          # s; a larger gap between frames resets the sequence
    viz_max_matches: int = 200           # lines drawn in 'matches_viz'
    seed: int = 0                        # sampling seed (with A's stamp: reproducible)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger inputs: InputError 'too_large'
    points_organized: bool = True        # points2: H x W with NaN, else valid points only
    points_stride: int = 1               # points2: every n-th row and column
    points_frame: str = 'rectified'      # points2: 'rectified' (as depth) or 'optical'
    min_disparity: float = 0.0           # px; the disparity range (DisparityImage); outside:
    max_disparity: float = 256.0         # invalid in every stereo output
    odom_frame: str = 'odom'             # stereo_odometry: the odometry's fixed frame
    base_frame: str = ''                 # stereo_odometry: odometry of this body frame
    keyframe_overlap: float = 0.7        # stereo_odometry: see romav2_core.tracking
    keyframe_flow: float = 0.1
    tracking_min_overlap: float = 0.2
    max_lost_frames: int = 5

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode={self.mode!r}: one of {MODES}')
        if self.points_frame not in POINT_FRAMES:
            raise ValueError(f'points_frame={self.points_frame!r}: one of {POINT_FRAMES}')
        if not self.min_disparity < self.max_disparity:
            raise ValueError(f'min_disparity ({self.min_disparity:g}) must be below '
                             f'max_disparity ({self.max_disparity:g})')
        if not 0 <= self.tracking_min_overlap <= self.keyframe_overlap <= 1:
            raise ValueError(f'tracking_min_overlap ({self.tracking_min_overlap:g}) must not '
                             f'exceed keyframe_overlap ({self.keyframe_overlap:g})')

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
    odometry_quality: dict = field(default_factory=dict)   # inlier ratio, keyframe, ...


class Products:
    """A set's products on their way to the host: computed and copied at once on CUDA (the
    device works on while the model stage goes on), or -- on the CPU, where the device is the
    host -- computed when the host stage asks, on its own thread."""

    def __init__(self, compute: Callable[[], dict], staging: HostStaging):
        self._staging = staging
        self._staged: Optional[Staged] = None
        self._compute: Optional[Callable] = compute
        if staging.device.type == 'cuda':
            self._start()

    def _start(self) -> None:
        compute, self._compute = self._compute, None
        with torch.inference_mode():
            self._staged = self._staging.stage(compute())

    def wait(self) -> HostProducts:
        if self._staged is None:
            self._start()
        return HostProducts(self._staged.wait())

    def release(self) -> None:
        self._compute = None
        if self._staged is not None:
            self._staged.release()


@dataclass(frozen=True)
class Decoded:
    """A set after the decode stage: the parameter snapshot it is processed with, its frames
    (the mode's :meth:`~romav2_ros.modes.Mode.decode`) or the InputError that refused them,
    and the decoding's host time, s."""

    cfg: PipelineConfig
    frames: tuple | InputError
    seconds: float


@dataclass
class Inferred:
    """A set after the model stage: its config snapshot and wanted outputs, its result so far
    (timings, notes), the mode's plan (frames, pairs, grids) and its products (None: nothing
    was matched, e.g. a sequence's first frame)."""

    cfg: PipelineConfig
    wanted: set
    res: PipelineResult
    plan: SetPlan
    products: Optional[Products] = None


class MatchingPipeline:
    """Decode -> match -> products -> poses and messages, for the configured mode."""

    def __init__(self, matcher: DenseMatcher, config: PipelineConfig, mounts=None):
        """``mounts``: where the camera's mount on the robot comes from when ``base_frame``
        is set: ``mounts.lookup(base_frame, camera_frame) -> (R, t) or None``
        (``static_tf``)."""
        self.matcher = matcher
        #: Replaced (never mutated) to change parameters: read once per set.
        self.config = config
        self.device = torch.device(getattr(matcher, 'device', 'cpu'))
        self._upload = ImageUploader(self.device)
        self._staging = HostStaging(self.device)
        self.mode = MODE_CLASSES[config.mode](mounts)

    def reset(self) -> None:
        """Forget the previous frame and stamp (a sequence, and an odometry segment,
        restarts with the next frame)."""
        self.mode.reset()

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
        """Several sets in arrival order through the three stages, the model's part as one batch
        where the mode allows: per set a PipelineResult, or the InputError that refused it."""
        if not self.mode.batchable:
            return [out for msgs in sets for out in self._both([msgs], wanted)]
        return self._both(sets, wanted)

    def _both(self, sets: list, wanted: set) -> list:
        return [self.finish(x) if isinstance(x, Inferred) else x
                for x in self.infer([self.decode(msgs) for msgs in sets], wanted)]

    # ---------------------------------------------------------------- the decode stage
    def decode(self, msgs: tuple) -> Decoded:
        """One synchronised set's frames, with the parameters of this moment (never
        raises InputError: a refused set keeps its place in the order, see :meth:`infer`)."""
        cfg = self.config
        t0 = time.perf_counter()
        try:
            frames = self.mode.decode(cfg, msgs)
        except InputError as exc:
            frames = exc
        return Decoded(cfg, frames, time.perf_counter() - t0)

    # ---------------------------------------------------------------- the model stage
    def infer(self, sets: list[Decoded], wanted: set) -> list:
        """The model stage of several decoded sets, in arrival order (one batch when the
        mode allows, else one at a time): per set an :class:`Inferred`, or the InputError
        that refused it."""
        if not self.mode.batchable and len(sets) > 1:
            return [out for one in sets for out in self.infer([one], wanted)]
        outcomes, matched = [], []
        for decoded in sets:
            cfg, res = decoded.cfg, PipelineResult()
            if isinstance(decoded.frames, InputError):
                self.mode.refused(decoded.frames)
                outcomes.append(decoded.frames)
                continue
            try:
                plan = self.mode.prepare(cfg, decoded.frames, wanted, res)
            except InputError as exc:
                outcomes.append(exc)
                continue
            res.timings['decode'] = decoded.seconds
            item = Inferred(cfg, set(wanted), res, plan)
            outcomes.append(item)
            res.paired = bool(plan.pairs)
            if plan.pairs or plan.keep:
                matched.append(item)
        if matched:
            self._match(matched)
        for item in matched:
            if item.plan.pairs:
                self._launch(item)
        return outcomes

    def _match(self, items: list) -> None:
        """Encode every frame without features (same-size frames as one batch), then match
        every pair of every set as one batch; the model time is shared out among the sets."""
        timer = DeviceTimer(self.device).start()
        with torch.inference_mode():
            frames = {id(f): f for it in items
                      for f in (*(f for pair in it.plan.pairs.values() for f in pair),
                                *it.plan.keep) if f.feats is None}
            groups = defaultdict(list)
            for f in frames.values():
                groups[f.image.shape, f.image.dtype.str].append(f)
            for group in groups.values():
                images = self._upload([f.image for f in group])
                feats = self.matcher.encode(images)
                for i, f in enumerate(group):
                    f.feats = feats[i:i + 1] if len(group) > 1 else feats
                    f.device_image = images[i]
            pairs = [(it, role, a, b) for it in items for role, (a, b) in it.plan.pairs.items()]
            preds = self.matcher.match_features(
                cat_features([a.feats for _, _, a, _ in pairs]),
                cat_features([b.feats for _, _, _, b in pairs])) if pairs else {}
            for i, (it, role, a, b) in enumerate(pairs):
                it.plan.grids[role] = PairGrid(preds['warp_AB'][i], preds['overlap_AB'][i],
                                               preds['covariance_AB'][i], a.hw, b.hw,
                                               it.cfg.certainty_threshold)
        timer.stop()
        for it in items:
            it.res.timings['model'] = _Share(timer, len(items))

    def _launch(self, item: Inferred) -> None:
        """The mode's decision after the match, then its products on their way. On one torch
        thread: the decision's few small ops still open OpenMP parallel regions (a one-slice
        ``kthvalue`` does), which wake the other threads for nothing, and on a busy machine
        the region then waits for them to get a core (the odometry's launch took 6 ms instead
        of 1 in the node at 30 Hz)."""
        t0 = time.perf_counter()
        with torch.inference_mode(), torch_threads(1):
            self.mode.after_match(item.cfg, item.plan, item.res)
        cfg, plan, wanted = item.cfg, item.plan, item.wanted
        generator = torch.Generator(self.device)
        generator.manual_seed(_seed(cfg.seed, plan.frames[0].stamp_ns))
        item.products = Products(lambda: self.mode.products(cfg, plan, wanted, generator),
                                 self._staging)
        item.res.timings['launch'] = time.perf_counter() - t0

    # ---------------------------------------------------------------- the host stage
    def finish(self, item: Inferred) -> PipelineResult:
        """The host stage of a set that :meth:`infer` returned (in the same order)."""
        res = item.res
        if item.products is None:
            _read_model_time(res)
            return res
        try:
            t0 = time.perf_counter()
            host = item.products.wait()
            t1 = time.perf_counter()
            res.timings['products'] = t1 - t0
            _read_model_time(res)
            self.mode.finish(item.cfg, item.plan, host, item.wanted, res)
            # what the host stage spent besides the poses and the pictures
            res.timings['messages'] = time.perf_counter() - t1 - \
                res.timings.get('pose', 0.0) - res.timings.get('viz', 0.0)
        finally:
            item.products.release()
        return res


def own_torch_threads(n: int) -> int:
    """Give the calling thread ``n`` torch intra-op threads, whatever other threads set; its
    count before. ``torch.set_num_threads`` sets the calling thread's count and a process-wide
    value that each thread copies at its first parallel op, replacing its own: so that copy is
    made first, then this thread's count set (a host stage's 1 had become the model stage's
    too: a CPU model at half speed on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


@contextmanager
def torch_threads(n: int):
    """The calling thread runs ``n`` torch intra-op threads inside, its own count after."""
    before = own_torch_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _read_model_time(res: PipelineResult) -> None:
    """The set's share of its batch's device time, now that the device is done with it."""
    model = res.timings.get('model')
    if isinstance(model, _Share):
        res.timings['model'] = model.seconds()


class _Share:
    """A share of a batch's device time, read once the device is known to be done."""

    def __init__(self, timer: DeviceTimer, n: int):
        self.timer, self.n = timer, n

    def seconds(self) -> float:
        return self.timer.seconds() / self.n


def _seed(seed: int, stamp_ns: int) -> int:
    """The sampling seed of a set: ``seed`` and A's stamp, mixed (reproducible, and the same
    whatever the batch)."""
    return int(np.random.SeedSequence([seed, stamp_ns]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))
