"""``romav2-replay``: run the node's processing over a recorded bag, offline, into a new bag.

Messages are read in log-time order, synchronised by the same synchronisers the node uses
(``sync.py``), and given to the same :class:`~romav2_ros.pipeline.MatchingPipeline`; only the
source (a bag instead of subscriptions) and the sink (a bag instead of publishers) differ.
Outputs are written under the topics the node would publish (``/romav2_node/warp``, ...),
with the log time of the input message that completed the set.

Exit status: 0 done, 1 unreadable input bag or other error (one line on stderr), 2 bad
arguments, 130 interrupted (the output bag is still closed and readable).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from romav2_ros import bag_io

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
#: Input roles in the order the pipeline takes them.
ROLES = {'stereo': ('left_image', 'left_info', 'right_image', 'right_info'),
         'sequential': ('image', 'info')}
#: PipelineConfig fields that are not command-line options (set from other arguments).
NOT_OPTIONS = ('mode',)


class ReplayError(RuntimeError):
    """A problem with the inputs or arguments, reported as one line (no traceback)."""


# --- command line --------------------------------------------------------------------------

def _pipeline_options(parser: argparse.ArgumentParser) -> None:
    """One option per PipelineConfig field, so the replay always offers the node's settings."""
    from romav2_ros.pipeline import PipelineConfig
    group = parser.add_argument_group('processing (the node parameters of the same names)')
    for f in dataclasses.fields(PipelineConfig):
        if f.name in NOT_OPTIONS:
            continue
        flag = '--' + f.name.replace('_', '-')
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            group.add_argument(flag, type=type(f.default), default=f.default,
                               help=f'default {f.default}')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from romav2_ros.pipeline import OUTPUTS
    parser = argparse.ArgumentParser(prog='romav2-replay', description=__doc__.split('\n')[0])
    parser.add_argument('in_bag', type=Path, help='input rosbag2 folder (mcap or sqlite3)')
    parser.add_argument('out_bag', type=Path, help='output rosbag2 folder (must not exist)')
    parser.add_argument('--mode', choices=tuple(ROLES), default='stereo')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='stereo: LEFT_IMAGE LEFT_INFO RIGHT_IMAGE RIGHT_INFO; sequential: '
                             'IMAGE INFO (default: found by name, <image topic>/../camera_info)')
    parser.add_argument('--outputs', default=','.join(OUTPUTS),
                        help=f'comma-separated outputs to compute (default all: '
                             f'{",".join(OUTPUTS)})')
    parser.add_argument('--node-name', default='romav2_node',
                        help='outputs go to /<node-name>/<output> (default romav2_node)')
    parser.add_argument('--include-inputs', action='store_true',
                        help='copy the input topics into the output bag too')
    parser.add_argument('--storage', choices=tuple(bag_io.STORAGE_PLUGINS), default='mcap')
    parser.add_argument('--limit', type=int, metavar='N', help='stop after N processed pairs')
    sync = parser.add_argument_group('synchronisation (as the node)')
    sync.add_argument('--sync', choices=('exact', 'approximate'), default='approximate')
    sync.add_argument('--slop', type=float, default=0.01,
                      help='approximate sync: max stamp difference, s (default 0.01)')
    sync.add_argument('--queue-size', type=int, default=10)
    model = parser.add_argument_group('model')
    model.add_argument('--setting', default='turbo',
                       help='RoMa v2 setting: turbo, fast, base, precise, mega1500')
    model.add_argument('--weights', help='RoMa v2 checkpoint (default: the download cache)')
    model.add_argument('--random-weights', type=int, metavar='SEED',
                       help='seeded random weights instead of a checkpoint (plumbing, timing)')
    model.add_argument('--model-source',
                       help='a registered matcher name or package.module:factory (as the '
                            'node parameter model_source); overrides the two above')
    model.add_argument('--device', help='torch device (default cuda if available, else cpu)')
    _pipeline_options(parser)
    args = parser.parse_args(argv)
    args.outputs = [o for o in (s.strip() for s in args.outputs.split(',')) if o]
    unknown = sorted(set(args.outputs) - set(OUTPUTS))
    if unknown:
        parser.error(f'unknown outputs {unknown}; choose from {",".join(OUTPUTS)}')
    if args.topics is not None and len(args.topics) != len(ROLES[args.mode]):
        parser.error(f'--topics for {args.mode}: {" ".join(r.upper() for r in ROLES[args.mode])}')
    if args.limit is not None and args.limit < 1:
        parser.error('--limit must be at least 1')
    return args


# --- inputs --------------------------------------------------------------------------------

def _info_topic(image_topic: str, msgtype: str) -> str:
    """``/cam/left/image_rect[/compressed]`` -> ``/cam/left/camera_info`` (ROS naming rule)."""
    base = image_topic.rstrip('/')
    if msgtype.endswith('CompressedImage') and base.endswith('/compressed'):
        base = base[:-len('/compressed')]
    return base.rsplit('/', 1)[0] + '/camera_info'


def select_topics(connections, mode: str, topics: list[str] | None) -> dict[str, str]:
    """Role -> topic: the given ``topics``, or image topics with a camera_info sibling."""
    types = {c.topic: c.msgtype for c in connections}
    if topics is None:
        cameras = {t: _info_topic(t, m) for t, m in types.items()
                   if m in IMAGE_TYPES and types.get(_info_topic(t, m)) == INFO_TYPE}
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
        want = (INFO_TYPE,) if role.endswith('info') else IMAGE_TYPES
        if types.get(topic) not in want:
            raise ReplayError(f'{role} topic {topic}: ' + (
                f'type {types[topic]}, expected {" or ".join(want)}' if topic in types
                else f'not in the bag (topics: {sorted(types)})'))
    return roles


class _BagSource:
    """A message_filters input fed from a bag instead of a subscription."""

    def __init__(self):
        self.callbacks = []

    def registerCallback(self, cb, *args):  # noqa: N802 (message_filters API)
        self.callbacks.append((cb, args))

    def signalMessage(self, msg):  # noqa: N802
        for cb, args in self.callbacks:
            cb(msg, *args)


class Pairer:
    """The node's synchroniser over bag messages: ``feed(role, msg)`` -> completed sets."""

    def __init__(self, roles: tuple[str, ...], kind: str, queue_size: int, slop: float):
        from romav2_ros import sync
        self.sources = {role: _BagSource() for role in roles}
        sources = list(self.sources.values())
        if kind == 'exact':
            synchroniser = sync.ExactTimeSynchronizer(sources, queue_size)
        else:
            synchroniser = sync.ApproximateTimeSynchronizer(sources, queue_size, slop)
        self._ready: list[tuple] = []
        synchroniser.registerCallback(lambda *msgs: self._ready.append(msgs))

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
        self.tty = sys.stderr.isatty()

    def update(self, done: int, processed: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.1 if self.tty else self.interval):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = f'{(self.total - done) / rate:.0f} s' if rate > 0 and done < self.total else '-'
        line = (f'romav2-replay: {done}/{self.total} frames ({processed} processed), '
                f'{rate:.2f} frames/s, ETA {eta}')
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

    def lines(self, elapsed: float, status: str, writer_counts: dict) -> list[str]:
        lines = [f'romav2-replay: {status} in {elapsed:.1f} s: {self.processed} processed of '
                 f'{self.sets} synchronised input sets']
        per_role = self.role_counts
        unpaired = {r: n - self.sets for r, n in per_role.items() if n > self.sets}
        dropped = dict(self.dropped)
        dropped.update({f'unsynchronised {r}': n for r, n in unpaired.items()})
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

def build_matcher(args):
    """The matcher the node would build from the same model options (``matchers.create``)."""
    import torch
    from romav2_core.config import RoMaV2Config
    from romav2_ros import matchers
    if args.model_source:
        source = args.model_source
    else:
        source = 'random' if args.random_weights is not None else 'pretrained'
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        config = RoMaV2Config.from_setting(args.setting)
        return matchers.create(source, config, device, weights=args.weights or '',
                               seed=args.random_weights or 0)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        raise ReplayError(f'cannot build the matcher ({source}): {bag_io.one_line(exc)}') \
            from exc


def _pipeline_config(args):
    from romav2_ros.pipeline import PipelineConfig
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PipelineConfig)
              if f.name not in NOT_OPTIONS}
    return PipelineConfig(mode=args.mode, **values)


class _Run:
    """One replay's state: the pipeline, the output bag and the running summary."""

    def __init__(self, args, pipeline, writer: bag_io.BagWriter, progress: Progress):
        self.args, self.pipeline, self.writer, self.progress = args, pipeline, writer, progress
        self.wanted = set(args.outputs)
        self.summary = Summary()

    def handle(self, msgs: tuple, log_ns: int) -> None:
        """Process one synchronised set and write its outputs at ``log_ns``."""
        from romav2_ros.pipeline import InputError
        summary = self.summary
        summary.sets += 1
        try:
            if self.args.mode == 'stereo':
                result = self.pipeline.process_stereo(*msgs, self.wanted)
            else:
                result = self.pipeline.process_sequential(*msgs, self.wanted)
        except InputError as exc:
            summary.dropped[exc.code] += 1
            result = None
        else:
            if result is None:
                summary.notes['first frame of a sequence (no pair yet)'] += 1
        if result is not None:
            with bag_io.signals_deferred():  # a frame's outputs are written all or none
                for key, msg in result.messages.items():
                    self.writer.write(f'/{self.args.node_name}/{key}', msg, log_ns)
            summary.processed += 1
            summary.add_timings(result.timings)
            summary.add_notes(result.notes)
        self.progress.update(summary.sets, summary.processed)


def replay(args, matcher=None) -> int:
    """Run the replay described by ``args`` (from :func:`parse_args`); returns the exit code.

    ``matcher`` replaces the one the model options describe (in-process callers, tests).
    """
    from romav2_ros.pipeline import MatchingPipeline
    if args.out_bag.exists():
        raise ReplayError(f'output bag {args.out_bag} exists already; remove it or choose '
                          f'another name')
    started = time.monotonic()
    with bag_io.open_reader(args.in_bag) as reader:
        roles = select_topics(reader.connections, args.mode, args.topics)
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
        pipeline = MatchingPipeline(matcher or build_matcher(args), _pipeline_config(args))
        pairer = Pairer(ROLES[args.mode], args.sync, args.queue_size, args.slop)
        status, error = 'done', None
        with bag_io.BagWriter(args.out_bag, args.storage, store) as writer:
            run = _Run(args, pipeline, writer, Progress(total))
            try:
                for conn, log_ns, raw in bag_io.read_messages(reader, connections):
                    if args.include_inputs:
                        writer.write_raw(conn.topic, conn.msgtype, log_ns, raw, source=conn)
                    role = role_of[conn.topic]
                    run.summary.role_counts[role] += 1
                    for msgs in pairer.feed(role, bag_io.deserialize(raw, conn.msgtype)):
                        run.handle(msgs, log_ns)
                    if args.limit is not None and run.summary.processed >= args.limit:
                        break
            except KeyboardInterrupt:
                status = 'interrupted'
            except bag_io.BagError as exc:
                status, error = 'stopped by an input error', exc
        run.progress.update(run.summary.sets, run.summary.processed, final=True)
        for line in run.summary.lines(time.monotonic() - started, status, writer.counts):
            print(line, file=sys.stderr)
    if error is not None:
        raise error
    return 130 if status == 'interrupted' else 0


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
