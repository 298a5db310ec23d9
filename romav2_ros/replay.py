"""``romav2-replay``: run the node's processing over a recorded bag, offline, into a new bag.

Messages are read in log-time order, synchronised by the same synchronisers the node uses
(``sync.py``), and given to the same :class:`~romav2_ros.pipeline.MatchingPipeline`, built
from the node's own parameters (``params.py``: same names, defaults and checks, set with
``-p name:=value``); only the source (a bag instead of subscriptions) and the sink (a bag
instead of publishers) differ. Unlike the live node nothing is dropped for lack of time, and
every requested output is written for every pair (``viz_rate`` does not apply). Outputs go to
the topics the node would publish (``/romav2_node/warp``, ...), at the log time of the input
message that completed the set. ``--batch N`` runs N sets through the model at a time (the
outputs are those of ``--batch 1``).

Exit status: 0 done, 1 unreadable input bag or other error (one line on stderr), 2 bad
arguments, 130 interrupted (the output bag is still closed and readable).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from romav2_ros import bag_io, messages, static_tf

#: Image type of each ``input_transport`` (node parameter).
IMAGE_TYPES = {'raw': 'sensor_msgs/msg/Image', 'compressed': 'sensor_msgs/msg/CompressedImage'}
INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
#: Input roles in the order the pipeline takes them.
ROLES = {'stereo': ('left_image', 'left_info', 'right_image', 'right_info'),
         'sequential': ('image', 'info'),
         'stereo_odometry': ('left_image', 'left_info', 'right_image', 'right_info')}
#: Sets given to the model at once (``--batch``); larger batches need more memory.
MAX_BATCH = 64


class ReplayError(RuntimeError):
    """A problem with the inputs or arguments, reported as one line (no traceback)."""


# --- command line --------------------------------------------------------------------------

def _parse_value(name: str, text: str):
    """A ``-p`` value as the type of the parameter's default."""
    from romav2_ros import params
    default = params.BY_NAME[name].default
    if params.BY_NAME[name].kind == 'double_array':     # [1.0, 2, 3] or 1.0,2,3
        return [float(v) for v in text.strip().strip('[]').split(',') if v.strip()]
    if isinstance(default, bool):
        if text.lower() not in ('true', 'false'):
            raise ValueError(f'{name}: true or false, not {text!r}')
        return text.lower() == 'true'
    return type(default)(text)


def node_parameters(args) -> dict:
    """The node's parameter values: defaults, then ``-p`` overrides, then the shortcut flags."""
    from romav2_ros import params
    values = {p.name: p.default for p in params.PARAMS}
    for item in args.param:
        name, sep, text = item.partition(':=')
        if not sep or name not in params.BY_NAME:
            raise ValueError(f'-p {item!r}: expected NAME:=VALUE with a node parameter name '
                             f'(README.md (section "The node"))')
        values[name] = _parse_value(name, text)
    shortcuts = {'mode': args.mode, 'setting': args.setting, 'weights': args.weights,
                 'device': args.device}
    values.update({k: v for k, v in shortcuts.items() if v is not None})
    if args.random_weights is not None:
        values.update(model_source='random', random_seed=args.random_weights)
    for name, value in values.items():
        reason = params.check(name, value)
        if reason:
            raise ValueError(reason)
    return values


def build_parser(bag_paths: bool = True) -> argparse.ArgumentParser:
    """The replay's parser; without ``bag_paths`` (IN_BAG OUT_BAG) for ``romav2-batch``, which
    takes the same options and checks them with :func:`check_args`."""
    from romav2_ros.pipeline import OUTPUTS
    parser = argparse.ArgumentParser(
        prog='romav2-replay',
        description='Run romav2_node\'s processing over a recorded rosbag2, offline, into a '
                    'new rosbag2 (outputs on the topics the node publishes).',
        epilog='Any node parameter can be set with -p NAME:=VALUE (README.md (section "The node")), e.g. '
               '-p certainty_threshold:=0.2 -p approximate_sync:=true.')
    if bag_paths:
        parser.add_argument('in_bag', type=Path, help='input rosbag2 folder (mcap or sqlite3)')
        parser.add_argument('out_bag', type=Path, help='output rosbag2 folder (must not exist)')
    parser.add_argument('--mode', choices=tuple(ROLES), help='node parameter mode (default stereo)')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='stereo: LEFT_IMAGE LEFT_INFO RIGHT_IMAGE RIGHT_INFO; sequential: '
                             'IMAGE INFO (default: found by name, <image topic>/../camera_info)')
    parser.add_argument('--outputs', default=None,
                        help=f'comma-separated outputs to compute (default: all of the '
                             f'mode\'s; any of {",".join(OUTPUTS)})')
    parser.add_argument('--node-name', default='romav2_node',
                        help='outputs go to /<node-name>/<output> (default romav2_node)')
    parser.add_argument('--include-inputs', action='store_true',
                        help='copy the input topics into the output bag too')
    parser.add_argument('--storage', choices=tuple(bag_io.STORAGE_PLUGINS), default='mcap')
    parser.add_argument('--limit', type=int, metavar='N', help='stop after N processed pairs')
    parser.add_argument('--trajectory', type=Path, metavar='PATH',
                        help='stereo_odometry: write the odometry of the tracked frames (not '
                             'the poses held while tracking was lost) as a TUM trajectory '
                             'file (timestamp tx ty tz qx qy qz qw) at PATH and a top-view '
                             'plot at PATH with the suffix .png')
    parser.add_argument('--batch', type=int, default=1, metavar='N',
                        help=f'sets run through the model at once (1-{MAX_BATCH}; stereo: '
                             f'independent pairs, sequential: consecutive frames, each '
                             f'encoded once; stereo_odometry: one at a time); outputs equal '
                             f'--batch 1')
    model = parser.add_argument_group('model (shortcuts for node parameters)')
    model.add_argument('--setting', help='setting: turbo, fast, base, precise (node default), '
                                         'mega1500')
    model.add_argument('--weights', metavar='PATH',
                       help='weights: RoMa v2 checkpoint (default: the download cache)')
    model.add_argument('--random-weights', type=int, metavar='SEED',
                       help='model_source:=random random_seed:=SEED (plumbing, timing)')
    model.add_argument('--device', help='device: auto (default), cpu, cuda, cuda:N')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='set a node parameter (repeatable)')
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    return check_args(parser, parser.parse_args(argv))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the node parameter values and check the options (``parser.error`` if bad)."""
    from romav2_ros.pipeline import OUTPUTS, mode_outputs
    try:
        args.values = node_parameters(args)
    except ValueError as exc:
        parser.error(str(exc))
    args.mode = args.values['mode']
    available = mode_outputs(args.mode)
    if args.outputs is None:
        args.outputs = list(available)
    else:
        args.outputs = [o for o in (s.strip() for s in args.outputs.split(',')) if o]
    unknown = sorted(set(args.outputs) - set(OUTPUTS))
    if unknown:
        parser.error(f'unknown outputs {unknown}; choose from {",".join(OUTPUTS)}')
    other_mode = sorted(set(args.outputs) - set(available))
    if other_mode:
        parser.error(f'outputs {other_mode} are not published in mode {args.mode}')
    if not 1 <= args.batch <= MAX_BATCH:
        parser.error(f'--batch must be in 1..{MAX_BATCH}')
    if args.trajectory is not None and 'odometry' not in args.outputs:
        parser.error('--trajectory needs --mode stereo_odometry and the odometry output')
    if args.topics is not None and len(args.topics) != len(ROLES[args.mode]):
        parser.error(f'--topics for {args.mode}: {" ".join(r.upper() for r in ROLES[args.mode])}')
    if args.limit is not None and args.limit < 1:
        parser.error('--limit must be at least 1')
    return args


# --- inputs --------------------------------------------------------------------------------

def _info_topic(image_topic: str) -> str:
    """``/cam/left/image_rect[/compressed]`` -> ``/cam/left/camera_info`` (ROS naming rule)."""
    base = image_topic.rstrip('/')
    base = base[:-len('/compressed')] if base.endswith('/compressed') else base
    return base.rsplit('/', 1)[0] + '/camera_info'


def select_topics(connections, mode: str, topics: list[str] | None,
                  transport: str = 'raw') -> dict[str, str]:
    """Role -> topic: the given ``topics``, or the image topics of type ``transport`` that
    have a camera_info beside them."""
    types = {c.topic: c.msgtype for c in connections}
    image_type = IMAGE_TYPES[transport]
    if topics is None:
        cameras = {t: _info_topic(t) for t, m in types.items()
                   if m == image_type and types.get(_info_topic(t)) == INFO_TYPE}
        if not cameras:
            other = [t for t, m in types.items() if m in IMAGE_TYPES.values()]
            raise ReplayError(f'no {image_type} topic with a camera_info beside it (input_'
                              f'transport {transport}); image topics in the bag: {other}; '
                              f'see -p input_transport:=raw|compressed and --topics')
        if mode == 'sequential':
            if len(cameras) != 1:
                raise ReplayError(f'found {len(cameras)} image topics with a camera_info '
                                  f'({sorted(cameras)}); name them with --topics IMAGE INFO')
            topics = [*cameras.items()][0]
        else:
            # 'left' as a whole word of the name: /stereo/left/..., /cam_left/..., not 'bright'.
            sides = {side: [t for t in cameras
                            if re.search(rf'(^|[/_]){side}([/_]|$)', t.lower())]
                     for side in ('left', 'right')}
            if len(sides['left']) != 1 or len(sides['right']) != 1:
                raise ReplayError(f'cannot tell the left and right cameras apart among '
                                  f'{sorted(cameras)}; name them with --topics LEFT_IMAGE '
                                  f'LEFT_INFO RIGHT_IMAGE RIGHT_INFO')
            left, right = sides['left'][0], sides['right'][0]
            topics = [left, cameras[left], right, cameras[right]]
    roles = dict(zip(ROLES[mode], topics))
    for role, topic in roles.items():
        want = INFO_TYPE if role.endswith('info') else image_type
        if types.get(topic) != want:
            raise ReplayError(f'{role} topic {topic}: ' + (
                f'type {types[topic]}, expected {want}' if topic in types
                else f'not in the bag (topics: {sorted(types)})'))
    return roles


def static_transforms(reader) -> list:
    """The bag's ``/tf_static`` messages (a robot's camera mount), deserialised by rosbags
    (tf2_msgs need not be installed); empty when it has none."""
    connections = [c for c in reader.connections if c.topic == static_tf.TF_STATIC_TOPIC and
                   c.msgtype == 'tf2_msgs/msg/TFMessage']
    if not connections:
        return []
    store = bag_io.typestore()
    return [store.deserialize_cdr(raw, c.msgtype)
            for c, _, raw in bag_io.read_messages(reader, connections)]


class Pairer:
    """The node's synchroniser over bag messages: ``feed(role, msg)`` -> completed sets."""

    def __init__(self, roles: tuple[str, ...], values: dict):
        from romav2_ros import sync
        # message_filters inputs fed from the bag instead of subscriptions
        self.sources = {role: sync.SimpleFilter() for role in roles}
        synchroniser = sync.from_parameters(list(self.sources.values()), values)
        self._ready: list[tuple] = []
        self.late = 0
        synchroniser.registerCallback(lambda *msgs: self._ready.append(msgs))
        synchroniser.registerDropCallback(self._on_drop)

    def _on_drop(self, reason: str, msg) -> None:
        self.late += 1

    def feed(self, role: str, msg) -> list[tuple]:
        self.sources[role].signalMessage(msg)
        ready, self._ready = self._ready, []
        return ready


# --- progress and summary ------------------------------------------------------------------

class Progress:
    """One stderr line: sets done / expected, rate and ETA; rewritten in place on a terminal,
    a new line at most every ``interval`` seconds otherwise (logs, pipes)."""

    def __init__(self, total: int, interval: float = 0.5):
        self.total, self.interval = total, interval
        self.started = self.last = time.monotonic()
        self.shown = None
        self.tty = sys.stderr.isatty()

    def update(self, done: int, processed: int, final: bool = False) -> None:
        now = time.monotonic()
        if (done, processed) == self.shown or \
                not final and now - self.last < (0.1 if self.tty else self.interval):
            return
        self.last, self.shown = now, (done, processed)
        rate = done / max(now - self.started, 1e-9)
        eta = f'{(self.total - done) / rate:.0f} s' if rate > 0 and done < self.total else '-'
        speed = f'{rate:.2f} frames/s' if rate >= 0.1 or rate == 0 else f'{1 / rate:.1f} s/frame'
        line = (f'romav2-replay: {done}/{self.total} frames ({processed} processed), '
                f'{speed}, ETA {eta}')
        end = '\n' if final or not self.tty else ''
        print(('\r' if self.tty else '') + line, end=end, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Summary:
    """What happened to the inputs, printed at the end."""

    processed: int = 0
    sets: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    notes: Counter = dataclasses.field(default_factory=Counter)
    stage_s: defaultdict = dataclasses.field(default_factory=lambda: defaultdict(float))
    stage_n: Counter = dataclasses.field(default_factory=Counter)
    role_counts: Counter = dataclasses.field(default_factory=Counter)

    def add_timings(self, timings: dict) -> None:
        for stage, seconds in timings.items():
            self.stage_s[stage] += seconds
            self.stage_n[stage] += 1

    def add_notes(self, notes: list[str]) -> None:
        # Numbers vary per frame (match counts, stamp gaps); count the kinds of notes.
        self.notes.update(re.sub(r'[-+]?\d[\d.]*', '#', note) for note in notes)

    def add(self, other: 'Summary') -> None:
        """Add the counts of ``other`` (another time chunk of the same bag)."""
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if isinstance(mine, int):
                setattr(self, field.name, mine + theirs)
            else:
                for key, value in theirs.items():
                    mine[key] += value

    def dropped_by_reason(self) -> dict[str, int]:
        """Pipeline input errors by code, plus input messages that found no partner."""
        unpaired = {r: n - self.sets for r, n in self.role_counts.items() if n > self.sets}
        dropped = dict(self.dropped)
        dropped.update({f'unsynchronised {r}': n for r, n in unpaired.items()})
        return dropped

    def lines(self, elapsed: float, status: str, writer_counts: dict) -> list[str]:
        lines = [f'romav2-replay: {status} in {elapsed:.1f} s: {self.processed} processed of '
                 f'{self.sets} synchronised input sets']
        dropped = self.dropped_by_reason()
        if dropped:
            lines.append('  dropped: ' + ', '.join(f'{k} {v}' for k, v in sorted(dropped.items())))
        if self.notes:
            lines.append('  notes: ' + '; '.join(f'{k} (x{v})' for k, v in self.notes.items()))
        if self.stage_n:
            means = {s: self.stage_s[s] / self.stage_n[s] * 1e3 for s in self.stage_s}
            lines.append('  mean latency per frame: ' + ', '.join(
                f'{s} {ms:.1f} ms' for s, ms in means.items()) +
                f', total {sum(means.values()):.1f} ms')
        if writer_counts:
            lines.append('  wrote: ' + ', '.join(f'{t} {n}' for t, n in writer_counts.items()))
        return lines


# --- the replay ----------------------------------------------------------------------------

def build_matcher(values: dict):
    """The matcher the node builds from the same parameter values (``matchers.create``)."""
    from romav2_ros import matchers, params
    try:
        return matchers.create(values['model_source'], params.model_config(values),
                               params.resolve_device(values['device']), values['weights'],
                               values['random_seed'])
    except (ValueError, ImportError, OSError, RuntimeError) as exc:
        raise ReplayError(f'cannot build the matcher ({values["model_source"]}): '
                          f'{bag_io.one_line(exc)}') from exc


@contextmanager
def stop_requests() -> Iterator[dict]:
    """SIGINT/SIGTERM set ``['stop']``, which the loop checks between messages.

    A KeyboardInterrupt raised asynchronously can land inside C code (rclpy's deserialiser,
    torch) and come out as a different error; a flag stops cleanly after the current frame.
    A second signal interrupts at once.
    """
    state = {'stop': False}

    def request(signum, frame):
        if state['stop']:
            raise KeyboardInterrupt
        state['stop'] = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Run:
    """One replay's state: the pipeline, the output bag, the pending batch and the summary."""

    def __init__(self, args, pipeline, writer: bag_io.BagWriter, progress: Progress):
        self.args, self.pipeline, self.writer, self.progress = args, pipeline, writer, progress
        self.wanted = {k for k in args.outputs if args.values[f'publish_{k}']}
        self.summary = Summary()
        self._pending: list[tuple] = []     # (msgs, log_ns) waiting for a full batch
        self.trajectory: list[tuple] = []   # (stamp s, position, quaternion) of the odometry

    def handle(self, msgs: tuple, log_ns: int, lead_in: bool = False) -> None:
        """Queue one synchronised set; a full batch (or what ``--limit`` still allows) is
        processed and written.

        ``lead_in``: a set from before a time chunk (:class:`TimeWindow`), processed only for
        the pipeline's state (previous frame and stamp); nothing is written or counted.
        """
        self._pending.append((msgs, log_ns, lead_in))
        limit = self.args.limit
        if len(self._pending) >= self.args.batch or \
                limit is not None and self.summary.processed + len(self._pending) >= limit:
            self.flush()

    def done(self) -> bool:
        """``--limit`` pairs have been written."""
        return self.args.limit is not None and self.summary.processed >= self.args.limit

    def flush(self) -> None:
        """Process the pending sets and write their outputs, each at its own log time."""
        from romav2_ros.pipeline import InputError
        pending, self._pending = self._pending, []
        if not pending:
            return
        summary = self.summary
        outcomes = self.pipeline.process_batch([m for m, _, _ in pending], self.wanted)
        for (_, log_ns, lead_in), out in zip(pending, outcomes):
            if lead_in:
                continue
            summary.sets += 1
            if isinstance(out, InputError):
                summary.dropped[out.code] += 1
                continue
            summary.add_notes(out.notes)
            if not out.paired:
                summary.notes['first frame of a sequence (no pair yet)'] += 1
                continue
            with bag_io.signals_deferred():  # a frame's outputs are written all or none
                for key, msg in out.messages.items():
                    self.writer.write(f'/{self.args.node_name}/{key}', msg, log_ns)
            odometry = out.messages.get('odometry')
            if odometry is not None and out.odometry_state == 'OK':   # an estimate, not held
                pose = odometry.pose.pose
                self.trajectory.append((messages.stamp_ns(odometry.header.stamp) * 1e-9,
                                        [pose.position.x, pose.position.y, pose.position.z],
                                        [pose.orientation.x, pose.orientation.y,
                                         pose.orientation.z, pose.orientation.w]))
            summary.processed += 1
            summary.add_timings(out.timings)
        self.progress.update(summary.sets, summary.processed)


def write_trajectory(path: Path, rows: list) -> None:
    """The odometry as a TUM file at ``path`` and a top view at ``path.png``."""
    from romav2_core import trajectory
    stamps, positions, quaternions = (list(c) for c in zip(*rows)) if rows else ([], [], [])
    trajectory.write_tum(path, stamps, positions, quaternions)
    if rows:
        trajectory.plot_top_view(path.with_suffix('.png'), {'romav2 stereo odometry': positions})
    print(f'romav2-replay: trajectory of {len(rows)} poses in {path}', file=sys.stderr)


@dataclasses.dataclass
class TimeWindow:
    """A time chunk of a bag: only sets completed by a message logged in ``[start_ns,
    stop_ns)`` are output (None: the bag's start / end).

    Before ``start_ns`` the messages of ``lookback_ns`` are read and synchronised, and the
    last ``lead_in_sets`` sets found there go through the pipeline without output, so the
    chunk's first set sees the previous frame and stamp that a whole-bag replay gives it.
    """

    start_ns: int | None = None
    stop_ns: int | None = None
    lead_in_sets: int = 1
    lookback_ns: int = 0
    _pending: collections.deque = dataclasses.field(default_factory=collections.deque,
                                                    init=False, repr=False, compare=False)

    def read_range(self) -> tuple[int | None, int | None]:
        """Log-time range ``[start, stop)`` to read, the look-back included."""
        start = None if self.start_ns is None else self.start_ns - self.lookback_ns
        return start, self.stop_ns

    def contains(self, log_ns: int) -> bool:
        return self.start_ns is None or log_ns >= self.start_ns

    def handle(self, run: '_Run', msgs: tuple, log_ns: int) -> None:
        """Give a synchronised set to ``run``: held back as a lead-in before the window."""
        if not self.contains(log_ns):
            self._pending.append(msgs)
            while len(self._pending) > self.lead_in_sets:
                self._pending.popleft()
            return
        while self._pending:
            run.handle(self._pending.popleft(), 0, lead_in=True)
        run.handle(msgs, log_ns)


@dataclasses.dataclass
class BagResult:
    """What :func:`replay_bag` did: ``status`` is 'done', 'interrupted' or 'stopped by an
    input error'; ``written``: messages written per topic."""

    status: str
    summary: Summary
    written: dict
    elapsed_s: float


def replay(args, matcher=None) -> int:
    """Run the replay described by ``args`` (from :func:`parse_args`); returns the exit code.

    ``matcher`` replaces the one the model options describe (in-process callers, tests).
    """
    result = replay_bag(args, matcher)
    return 130 if result.status == 'interrupted' else 0


def replay_bag(args, matcher=None, progress=Progress, window: TimeWindow | None = None
               ) -> BagResult:
    """The replay of :func:`replay`, returning what happened (``romav2-batch`` runs each
    bag through it). ``progress(total)`` makes the object whose ``update(done, processed,
    final=False)`` is called per set; ``window`` limits the outputs to a time chunk.
    Input errors met mid-bag are raised after the output bag is closed.
    """
    from romav2_ros import params
    from romav2_ros.pipeline import MatchingPipeline
    if args.out_bag.exists():
        raise ReplayError(f'output bag {args.out_bag} exists already; remove it or choose '
                          f'another name')
    started = time.monotonic()
    with bag_io.open_reader(args.in_bag) as reader:
        roles = select_topics(reader.connections, args.mode, args.topics,
                              args.values['input_transport'])
        role_of = {topic: role for role, topic in roles.items()}
        connections = [c for c in reader.connections if c.topic in role_of]
        store = bag_io.typestore()
        bag_io.register_bag_types(store, connections)
        per_role = Counter()
        for c in connections:
            per_role[role_of[c.topic]] += c.msgcount
        total = min(per_role.values())
        if args.limit is not None:
            total = min(total, args.limit + (args.mode == 'sequential'))
        values = args.values
        print(f'romav2-replay: {args.mode} inputs {", ".join(roles.values())}', file=sys.stderr)
        if matcher is None:
            # Building a model can take minutes on a CPU: say what is happening.
            print(f'romav2-replay: building the matcher (model_source {values["model_source"]}'
                  f', setting {values["setting"]}, device {values["device"]})', file=sys.stderr,
                  flush=True)
            matcher = build_matcher(values)
        pipeline = MatchingPipeline(matcher, params.pipeline_config(values),
                                    static_tf.camera_mounts(values, static_transforms(reader)))
        pairer = Pairer(ROLES[args.mode], values)
        status, error = 'done', None
        window = window or TimeWindow()
        with bag_io.BagWriter(args.out_bag, args.storage, store) as writer, \
                stop_requests() as stop:
            run = _Run(args, pipeline, writer, progress(total))
            try:
                for conn, log_ns, raw in bag_io.read_messages(reader, connections,
                                                              *window.read_range()):
                    if stop['stop']:
                        raise KeyboardInterrupt
                    inside = window.contains(log_ns)
                    if args.include_inputs and inside:
                        writer.write_raw(conn.topic, conn.msgtype, log_ns, raw, source=conn)
                    role = role_of[conn.topic]
                    run.summary.role_counts[role] += inside
                    for msgs in pairer.feed(role, bag_io.deserialize(raw, conn.msgtype)):
                        window.handle(run, msgs, log_ns)
                    if run.done():
                        break
                run.flush()
            except KeyboardInterrupt:
                status = 'interrupted'
            except bag_io.BagError as exc:
                status, error = 'stopped by an input error', exc
        if pairer.late:
            run.summary.dropped['late_input'] += pairer.late
        if args.trajectory is not None:
            write_trajectory(args.trajectory, run.trajectory)
        run.progress.update(run.summary.sets, run.summary.processed, final=True)
        elapsed = time.monotonic() - started
        for line in run.summary.lines(elapsed, status, writer.counts):
            print(line, file=sys.stderr)
    if error is not None:
        raise error
    return BagResult(status, run.summary, dict(writer.counts), elapsed)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``romav2-replay``)."""
    # SIGTERM (a service manager, a test harness) stops the replay like Ctrl-C: the output
    # bag is closed and readable.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args(argv)
    try:
        return replay(args)
    except (bag_io.BagError, ReplayError) as exc:
        print(f'romav2-replay: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the output bag was opened: nothing to close
        print('romav2-replay: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
