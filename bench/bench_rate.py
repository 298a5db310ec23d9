"""Node rate: delivered output sets per second of the installed ``romav2_node`` under a camera
stream at a fixed input rate, measured from outside (the method of NVIDIA's ros2_benchmark:
a playback publisher, the node as users run it, a monitor that records arrivals).

Three processes on loopback, all with the Fast DDS large-image profile
(config/fastdds_large_images.xml, as the README tells users for large images):

1. **publisher** (``--role publisher``): a 640 x 480 rectified stereo stream, left/right rgb8
   ``Image`` + ``CameraInfo`` with one stamp per set, at a fixed rate with sensor-data QoS
   (best effort, as cameras publish). The messages are built once (the Middlebury Motorcycle
   pair, tagged in pixel (0, 0) as ``oracle_matchers.tag`` does, with the rig of
   ``oracle_matchers``: focal 500 px, baseline 0.1 m); only the stamp changes: the
   publisher's wall clock at publishing.
2. **the node**: the ``romav2_node`` console script with ``--params-file config/stereo.yaml``
   (``config/stereo_odometry.yaml`` for the odometry case), so its defaults are the user's
   (input QoS sensor_data, output QoS reliable depth 1, ...); only ``model_source`` differs
   (and ``publish_tf`` for the TF case; ``setting``/``device``/``weights``/``stage_nice`` when
   given). The model is the TIMING STAND-IN (bench/timing_standin.py: the real model's output
   sizes, a chosen model time, ``--model-ms``) or the real model (``--model random`` /
   ``pretrained``).
3. **subscriber** (``--role subscriber``): subscribes to the case's outputs (reliable, like the
   node's default output QoS; serialized, as ros2_benchmark's monitor does, so it pays no
   deserialisation) and ``/diagnostics``; records per stamp the wall-clock arrival of each
   output. A set is *delivered* when every subscribed output of its stamp arrived.

This script starts and steers them (it starts no DDS participant itself). Cases with the same
params file and node parameters share one node (and publisher), served in turn, each with a
subscriber of its own: the node computes only what is subscribed. One *step* = the
publisher at one rate for ``--warmup`` + ``--duration`` + 1 seconds, then a drain (until the
node's counters and the outputs have been still for a while). The measured window starts at the
first ``/diagnostics`` snapshot (1 Hz) after the warm-up, so the node's cumulative counters can
be read at its edges, and lasts ``--duration`` to ``--duration`` + 1 s (stamps are wall clock;
all processes share the clock). Per step (the JSON; computed by bench/rate_analysis.py):

* ``delivered_per_s``: delivered sets of the window per second; ``share_of_min_input_model``:
  that over min(input rate, model rate) (model rate: 1000 / ``--model-ms`` for the stand-in,
  1000 / the node's own mean model time for the real model);
* ``not_delivered_share``: published sets of the window that were not delivered;
* ``drops_before_model``: the node's ``dropped`` counter (``...: input`` status; a newer set
  replaced one waiting for the model); ``lost_before_node``: published minus the node's
  ``synchronized`` (lost on the best-effort input or never synchronised);
  ``drops_after_model``: sets that went through the model but were not delivered: the node's
  ``model_sets`` counter when it reports one, else its ``processed`` counter, minus the sets
  whose last output arrived inside the window (``drops_after_model_counter`` says which);
  counters are read at 1 Hz snapshots, so the window's edges can move these by a set or two;
* ``latency_ms``: publish stamp -> arrival of the set's last output (wall clock), median, p95;
* ``node_stage_ms``: the node's own time per set by stage (``latency_<stage>_ms_mean`` of its
  ``...: processing`` status, weighted by the sets of each 1 s period of the window) and
  ``queues``: the largest value of each ``queue_*`` key the node reported in the window;
* ``publisher_cpu_s`` / ``subscriber_cpu_s``: what the two helper processes cost the machine.

With random weights (``--model random``) poses may fail (``node_counts``:
``bad_input.pose_failed``); such sets count as dropped after the model.

``--peak`` steps the input rate through ``--peak-rates`` (default 5 10 15 20 25 30 40 Hz) and
stops at the first rate where 5 % or more of the published sets were not delivered;
``peak_rate_hz`` is the highest rate below that (None when even the first fails).

Cases (``--case``, default all): ``relative_pose`` (stereo), ``depth_points2`` (stereo depth +
points2), ``odometry_tf`` (stereo_odometry: odometry and, with ``publish_tf``, /tf; tf2_msgs
is built for the run with test/ros/tf2_msgs_build.py where it does not import (a few
seconds); if that fails the case measures odometry alone and says why),
``all_outputs`` (stereo: every output but the pictures).

DDS must stay on this machine: the script refuses to run unless
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a non-default ROS_DOMAIN_ID are set, and should run
in a private network namespace holding only ``lo``:

    unshare --net bash -c 'ip link set lo up; export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \\
        ROS_DOMAIN_ID=45; .venv/bin/python bench/bench_rate.py --rate 30'

    ... bench/bench_rate.py --rate 30 --model-ms 32            # stand-in, the four cases
    ... bench/bench_rate.py --case depth_points2 --peak         # the peak rate of one case
    ... bench/bench_rate.py --model random --device cuda --rate 30   # the real model (GPU)
    ... bench/bench_rate.py --smoke                   # CI: 2 s a step at 2 Hz, stand-in at turbo
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from rate_analysis import COUNTERS, analyse_step, counter, snapshot  # noqa: E402

sys.path.insert(0, str(common.ROOT / 'test' / 'ros'))

SCRIPT = Path(__file__).resolve()
BENCH = SCRIPT.parent
HOW_TO_RUN = ("run it inside a private network namespace with DDS confined to loopback:\n"
              "  unshare --net bash -c 'ip link set lo up; export "
              "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=45; "
              ".venv/bin/python bench/bench_rate.py --smoke'")
#: Prefix of the protocol lines the publisher and subscriber write for this script.
PROTOCOL = '@@rate '
STANDIN_SOURCE = 'timing_standin:stand_in'
INPUT_TOPICS = ('left/image_rect', 'left/camera_info', 'right/image_rect', 'right/camera_info')
#: Every stereo output but the pictures (*_viz).
STEREO_NON_PICTURE = ('warp', 'certainty', 'covariance', 'disparity', 'depth', 'depth_stddev',
                      'points2', 'matches', 'relative_pose', 'relative_pose_info')
#: case -> (params file, outputs a delivered set needs); 'tf' is /tf (with publish_tf).
CASES = {
    'relative_pose': ('stereo.yaml', ('relative_pose',)),
    'depth_points2': ('stereo.yaml', ('depth', 'points2')),
    'odometry_tf': ('stereo_odometry.yaml', ('odometry', 'tf')),
    'all_outputs': ('stereo.yaml', STEREO_NON_PICTURE),
}
PEAK_RATES = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0)
#: A rate passes the peak search while fewer than this share of its sets are not delivered.
LOSS_LIMIT = 0.05
#: Seconds the node's counters and the outputs must stay still before a step is drained.
MIN_QUIET_S = 2.0
#: The node publishes /diagnostics every this many seconds.
DIAGNOSTICS_PERIOD_S = 1.0


def check_environment() -> None:
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST' or \
            os.environ.get('ROS_DOMAIN_ID', '0') in ('', '0'):
        sys.exit('bench_rate.py refuses to start DDS: ROS_AUTOMATIC_DISCOVERY_RANGE must be '
                 'LOCALHOST and ROS_DOMAIN_ID set to a non-default value (not 0);\n' + HOW_TO_RUN)


def say(text: str) -> None:
    """One protocol line to the steering script."""
    print(PROTOCOL + text, flush=True)


def commands():
    """The steering script's lines on stdin, one at a time (a thread reads them, so the
    caller can spin meanwhile): a Queue of str, None at end of input."""
    lines: queue.Queue = queue.Queue()

    def read():
        for line in sys.stdin:
            lines.put(line.strip())
        lines.put(None)
    threading.Thread(target=read, daemon=True).start()
    return lines


# ------------------------------------------------------------------ publisher process
def stereo_set() -> list:
    """(left image, left info, right image, right info), built once: the Motorcycle pair
    at 640 x 480 tagged as left / right, the oracle rig's calibration, stamp 0."""
    import oracle_matchers as om
    from builtin_interfaces.msg import Time
    from bench_node import stereo_pair
    left, right, _, _ = stereo_pair(om.W, om.H)
    stamp = Time()
    return [om.image_msg(om.tag(left, 0, 1), 'left_optical', stamp),
            om.camera_info('left_optical', stamp),
            om.image_msg(om.tag(right, 0, 2), 'right_optical', stamp),
            om.camera_info('right_optical', stamp, tx=om.BASELINE)]


def run_publisher() -> None:
    """``run RATE SECONDS`` -> publish sets at RATE Hz for SECONDS, reply with their stamps
    (ns) and how often the schedule slipped by more than a period; ``stop`` -> exit."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from romav2_ros.messages import to_time
    rclpy.init()
    node = rclpy.create_node('romav2_rate_publisher')
    msgs = stereo_set()
    pubs = [node.create_publisher(Image if 'image' in t else CameraInfo, '/' + t,
                                  qos_profile_sensor_data) for t in INPUT_TOPICS]
    while not all(p.get_subscription_count() > 0 for p in pubs):
        time.sleep(0.05)
    say('ready')
    lines = commands()
    while (line := lines.get()) not in (None, 'stop'):
        _, rate, seconds = line.split()
        period = 1.0 / float(rate)
        stamps, slipped = [], 0
        cpu0 = time.process_time()
        deadline = time.perf_counter()
        for _ in range(round(float(rate) * float(seconds))):
            wait = deadline - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -period:      # a period or more behind: restart the schedule
                slipped += 1
                deadline = time.perf_counter()
            ns = time.time_ns()
            stamp = to_time(ns)
            for msg in msgs:
                msg.header.stamp = stamp
            for pub, msg in zip(pubs, msgs):
                pub.publish(msg)
            stamps.append(ns)
            deadline += period
        say(json.dumps({'stamps_ns': stamps, 'slipped': slipped,
                        'cpu_s': time.process_time() - cpu0}))
    node.destroy_node()
    rclpy.try_shutdown()


# ------------------------------------------------------------------ subscriber process
def header_stamp_ns(raw: bytes, offset: int) -> int:
    """The stamp (ns) of a serialized message whose header stamp starts at byte ``offset``
    (4: a message that begins with a Header, after the 4-byte CDR encapsulation)."""
    if raw[1] != 1:
        raise ValueError('expected little-endian CDR (encapsulation 0x0001)')
    sec, nanosec = struct.unpack_from('<iI', raw, offset)
    return sec * 1_000_000_000 + nanosec


def node_matched(snap: dict, outputs) -> bool:
    """Whether the node's output publishers have matched a subscription for each of
    ``outputs``, as its ``subscribers.<key>`` diagnostics say (matched on the publishing side:
    only then does a message reach us); True for a node that does not report them."""
    prefix = 'subscribers.'
    reported = {k[len(prefix):]: int(v) for k, v in snap.get('processing', {}).items()
                if k.startswith(prefix)}
    return not reported or all(reported.get(k, 0) >= 1 for k in outputs)


class Recorder:
    """The subscriber's state: arrivals per stamp and output, /diagnostics snapshots, and the
    wall time of the last change (an arrival, or a snapshot whose counters moved)."""

    def __init__(self):
        self.arrivals: dict[int, dict[str, int]] = {}
        self.snapshots: list[dict] = []
        self.changed_ns = time.time_ns()
        self._counters = None
        self._cpu0 = time.process_time()

    def arrived(self, key: str, stamp_ns: int) -> None:
        now = time.time_ns()
        self.arrivals.setdefault(stamp_ns, {})[key] = now
        self.changed_ns = now

    def diagnostics(self, msg) -> None:
        snap = snapshot(msg, time.time_ns())
        if 'processing' not in snap:
            return                   # another node's /diagnostics
        counters = tuple(counter(snap, k) for k in COUNTERS)
        if counters != self._counters:
            self._counters = counters
            self.changed_ns = snap['received_ns']
        self.snapshots.append(snap)

    def drained(self) -> bool:
        """Still for max(MIN_QUIET_S, twice the slowest latency seen), and a snapshot taken
        after that (so the counters it holds are final)."""
        latencies = [max(t.values()) - s for s, t in self.arrivals.items()]
        quiet_ns = max(MIN_QUIET_S * 1e9, 2 * max(latencies, default=0))
        return bool(self.snapshots) and \
            self.snapshots[-1]['received_ns'] >= self.changed_ns + quiet_ns

    def take(self, drained: bool) -> dict:
        cpu = time.process_time()
        out = {'arrivals': {str(s): t for s, t in self.arrivals.items()},
               'diagnostics': self.snapshots, 'drained': drained, 'cpu_s': cpu - self._cpu0}
        self.arrivals, self.snapshots, self._cpu0 = {}, [], cpu
        return out


def run_subscriber(outputs: list[str], timeout: float) -> None:
    """Record the outputs and /diagnostics; ``collect`` -> wait for the drain (at most
    ``timeout`` s) and reply with everything recorded since the last collect; ``stop``."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from romav2_ros.messages import output_type
    rclpy.init()
    node = rclpy.create_node('romav2_rate_subscriber')
    rec = Recorder()
    subs = []
    for key in outputs:
        if key == 'tf':   # TFMessage: a sequence length, then the first transform's header
            from tf2_msgs.msg import TFMessage
            msg_type, topic, offset, depth = TFMessage, '/tf', 8, 100
        else:
            msg_type, topic, offset, depth = output_type(key), f'/romav2_node/{key}', 4, 10
        subs.append(node.create_subscription(
            msg_type, topic, lambda raw, key=key, offset=offset:
            rec.arrived(key, header_stamp_ns(raw, offset)),
            QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE), raw=True))
    node.create_subscription(DiagnosticArray, '/diagnostics', rec.diagnostics, 50)
    while not (all(s.get_publisher_count() > 0 for s in subs) and rec.snapshots and
               node_matched(rec.snapshots[-1], outputs)):
        rclpy.spin_once(node, timeout_sec=0.05)
    say('ready')
    lines = commands()
    while True:
        rclpy.spin_once(node, timeout_sec=0.05)
        try:
            line = lines.get_nowait()
        except queue.Empty:
            continue
        if line in (None, 'stop'):
            break
        deadline = time.monotonic() + timeout
        while not rec.drained() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        say(json.dumps(rec.take(rec.drained())))
    node.destroy_node()
    rclpy.try_shutdown()


# ------------------------------------------------------------------ steering
class Role:
    """A publisher or subscriber process of this script, steered by protocol lines."""

    def __init__(self, role: str, args: list[str], env: dict, log: Path, node):
        self.role, self.node = role, node
        self._log = open(log, 'w')
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), '--role', role, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, env=env)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                self._lines.put(line[len(PROTOCOL):].strip())
        self._lines.put(None)

    def ask(self, command: str | None, timeout: float) -> str:
        """Send ``command`` (None: nothing) and wait for the reply line."""
        if command is not None:
            self.proc.stdin.write(command + '\n')
            self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.node.proc.poll() is not None:
                    raise RuntimeError(f'romav2_node exited ({self.node.proc.returncode}):\n'
                                       f'{self.node.output()[-3000:]}')
                continue
            if reply is None:
                break
            return reply
        self.proc.kill()
        self._log.flush()
        raise RuntimeError(f'{self.role}: no reply to {command!r}:\n'
                           f'{Path(self._log.name).read_text()[-3000:]}')

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('stop\n')
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def tf_environment(build_dir: Path) -> tuple[dict, str | None]:
    """(environment entries that make tf2_msgs importable, None) or ({}, why not)."""
    import tf2_msgs_build
    try:
        return tf2_msgs_build.build(build_dir), None
    except (RuntimeError, OSError, subprocess.SubprocessError, StopIteration) as exc:
        return {}, f'tf2_msgs could not be built ({type(exc).__name__}: {str(exc)[:300]})'


def node_parameters(args, case: str) -> dict:
    """The ``-p`` overrides of the params file (module docstring)."""
    params = {'model_source': STANDIN_SOURCE if args.model == 'standin' else args.model}
    if case == 'odometry_tf':
        params['publish_tf'] = True
    for name in ('setting', 'device', 'weights', 'stage_nice'):
        if getattr(args, name) not in (None, ''):
            params[name] = getattr(args, name)
    if args.smoke and args.model != 'standin':   # a toy model size for CI's CPUs
        params.update(H_lr=64, W_lr=96, H_hr=-1, W_hr=-1)
    return params


def node_groups(args) -> list[tuple[str, dict, list[str]]]:
    """(params file, node parameters, cases): the cases one node serves in turn (those with
    the same file and parameters), in the order of ``--case``."""
    groups: list[tuple[str, dict, list[str]]] = []
    for case in args.case:
        params_file, params = CASES[case][0], node_parameters(args, case)
        group = next((g for g in groups if g[:2] == (params_file, params)), None)
        if group is None:
            groups.append((params_file, params, [case]))
        else:
            group[2].append(case)
    return groups


def run_steps(args, case: str, outputs: tuple, rates: list[float], pub: Role,
              sub: Role) -> list[dict]:
    """One step per rate (with --peak: up to the first that loses LOSS_LIMIT or more)."""
    steps = []
    for rate in rates:
        # one more /diagnostics period: the window starts at the first snapshot after the
        # warm-up, so it lasts at least --duration
        seconds = args.warmup + args.duration + DIAGNOSTICS_PERIOD_S
        published = json.loads(pub.ask(f'run {rate} {seconds}', seconds + args.timeout))
        collected = json.loads(sub.ask('collect', 2 * args.timeout))
        steps.append(analyse_step(rate, published, collected, outputs, args.warmup,
                                  args.model_ms if args.model == 'standin' else None))
        print(f'{case} {rate:g} Hz: {steps[-1]["delivered_per_s"]:.1f} sets/s delivered, '
              f'{100 * steps[-1]["not_delivered_share"]:.1f} % not delivered', file=sys.stderr)
        if args.peak and steps[-1]['not_delivered_share'] >= LOSS_LIMIT:
            break
    return steps


def run_node(args, params_file: str, params: dict, cases: list[str], rates: list[float],
             tmp: Path) -> list[dict]:
    """One node and publisher; per case a subscriber of its outputs (the node computes only
    what is subscribed) and its steps."""
    from node_harness import NodeProcess, node_env, with_env
    extra = {'PYTHONPATH': str(BENCH)}
    if args.model == 'standin':
        extra['ROMAV2_STANDIN_MODEL_MS'] = str(args.model_ms)
    tf_note = None
    if any('tf' in CASES[case][1] for case in cases):
        tf_env, tf_note = tf_environment(args.tf2_msgs_dir or tmp / 'tf2_msgs')
        extra = with_env(extra, tf_env)
    env = with_env(node_env(), extra)
    name = Path(params_file).stem
    node = NodeProcess(params, tmp / f'{name}_node.log', env=extra,
                       params_file=common.ROOT / 'config' / params_file)
    pub = Role('publisher', [], env, tmp / f'{name}_publisher.log', node)
    results = []
    try:
        t_start = time.monotonic()
        pub.ask(None, args.timeout)
        startup = time.monotonic() - t_start
        for case in cases:
            outputs = tuple(k for k in CASES[case][1] if k != 'tf' or tf_note is None)
            sub = Role('subscriber', ['--outputs', *outputs, '--timeout', str(args.timeout)],
                       env, tmp / f'{case}_subscriber.log', node)
            try:
                sub.ask(None, args.timeout)
                steps = run_steps(args, case, outputs, rates, pub, sub)
            finally:
                sub.stop()
            result = {'case': case, 'params_file': f'config/{params_file}',
                      'node_parameters': params, 'outputs': list(outputs),
                      'node_startup_s': startup, 'node_served': cases, 'steps': steps}
            if 'tf' in CASES[case][1]:
                result['tf'] = tf_note or ('measured: /tf with publish_tf (tf2_msgs built '
                                           'for the run where it does not import)')
            if args.peak:
                passed = [s['input_rate_hz'] for s in steps
                          if s['not_delivered_share'] < LOSS_LIMIT]
                result['peak_rate_hz'] = max(passed) if passed else None
            results.append(result)
    finally:
        pub.stop()
        rc = node.stop(signal.SIGINT)
    if rc != 0:
        raise RuntimeError(f'romav2_node exited with {rc}:\n{node.output()[-3000:]}')
    return results


def summary(case: dict, peak: bool) -> str:
    """A case in a few words (the one-line summary on stderr)."""
    if peak:
        rate = case['peak_rate_hz']
        return f"{case['case']}: peak " + ('none' if rate is None else f'{rate:g} Hz')
    step = case['steps'][0]
    latency = step['latency_ms']['median']
    return (f"{case['case']}: {step['delivered_per_s']:.1f} sets/s of "
            f"{step['input_rate_hz']:g} Hz, latency "
            + ('-' if latency is None else f'{latency:.0f} ms'))


def code_revision(label: str | None) -> str:
    """What code the node ran: ``label`` when given (an exported tree has no git metadata),
    else ``git describe --always --dirty`` of this tree."""
    if label:
        return label
    done = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=common.ROOT,
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else 'unknown (no git metadata)'


def model_description(args) -> dict:
    from romav2_core.config import RoMaV2Config
    import yaml
    file_setting = yaml.safe_load((common.ROOT / 'config' / 'stereo.yaml').read_text())[
        '/**']['ros__parameters']['setting']
    setting = args.setting or file_setting
    if args.model == 'standin':
        cfg = RoMaV2Config.from_setting(setting)
        grid = [cfg.H_hr, cfg.W_hr] if cfg.has_hr else [cfg.H_lr, cfg.W_lr]
        return {'source': STANDIN_SOURCE, 'what': 'TIMING STAND-IN (bench/timing_standin.py): '
                'the real model\'s output sizes, no model; sleeps model_ms per match call',
                'model_ms': args.model_ms, 'setting': setting, 'output_grid_hw': grid}
    return {'source': args.model, 'setting': setting, 'device': args.device or 'auto',
            'weights': args.weights or ('seeded random (timing only; no accuracy meaning; '
                                        'poses may fail)' if args.model == 'random' else
                                        'the download cache'),
            'smoke_model_size': [64, 96] if args.smoke else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--case', nargs='+', choices=list(CASES), default=list(CASES))
    p.add_argument('--rate', type=float, default=30.0, help='input rate, Hz (without --peak)')
    p.add_argument('--duration', type=float, default=10.0, help='measured seconds per step')
    p.add_argument('--warmup', type=float, default=5.0, help='seconds per step before that')
    p.add_argument('--peak', action='store_true', help='step through --peak-rates')
    p.add_argument('--peak-rates', type=float, nargs='+', default=list(PEAK_RATES))
    p.add_argument('--model', choices=['standin', 'random', 'pretrained'], default='standin')
    p.add_argument('--model-ms', type=float, default=32.0,
                   help='the stand-in\'s model time per match call, ms')
    p.add_argument('--setting', default=None, help='node parameter (default: the params file\'s)')
    p.add_argument('--device', default=None, help='node parameter (default: the params file\'s)')
    p.add_argument('--stage-nice', type=int, default=None,
                   help='node parameter (default: the node\'s; 0: every stage thread at one '
                        'priority)')
    p.add_argument('--weights', default=None, help='node parameter, with --model pretrained')
    p.add_argument('--tf2-msgs-dir', type=Path, default=None,
                   help='where tf2_msgs is built when it does not import (default: a '
                        'temporary folder; a given one is reused)')
    p.add_argument('--timeout', type=float, default=300.0,
                   help='seconds to wait for the node to start, a step to drain')
    p.add_argument('--code', default=None,
                   help='what code the node runs, for the JSON (default: git describe of '
                        'this tree)')
    p.add_argument('--smoke', action='store_true',
                   help='CI: 2 Hz (peak: 2 and 4 Hz), 1 s warm-up, 2 s; stand-in at turbo, '
                        'the real model at 64x96')
    p.add_argument('--role', choices=['publisher', 'subscriber'], help=argparse.SUPPRESS)
    p.add_argument('--outputs', nargs='+', help=argparse.SUPPRESS)
    args = p.parse_args()
    check_environment()
    if args.role == 'publisher':
        return run_publisher()
    if args.role == 'subscriber':
        return run_subscriber(args.outputs, args.timeout)
    if args.smoke:
        # above 1 Hz: stereo_odometry.yaml's max_stamp_jump (1 s) would reset every frame
        args.rate, args.warmup, args.duration = 2.0, 1.0, 2.0
        args.peak_rates = [2.0, 4.0]
        if args.model == 'standin':
            args.setting = args.setting or 'turbo'
    rates = args.peak_rates if args.peak else [args.rate]
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for params_file, params, group in node_groups(args):
            cases += run_node(args, params_file, params, group, rates, Path(tmp))
    result = {'benchmark': 'node_rate',
              'command': ' '.join(['bench/bench_rate.py', *sys.argv[1:]]),
              'machine': common.machine(), 'code': code_revision(args.code),
              'model': model_description(args),
              'image_size_wh': [640, 480],
              'input': 'left/right rgb8 Image + CameraInfo, one wall-clock stamp per set, '
                       'sensor-data QoS (best effort), messages built once',
              'transport': 'loopback, Fast DDS with config/fastdds_large_images.xml in every '
                           'process, ROS_DOMAIN_ID=' + os.environ['ROS_DOMAIN_ID'],
              'warmup_s': args.warmup, 'duration_s': args.duration, 'peak': args.peak,
              'loss_limit': LOSS_LIMIT, 'cases': cases}
    common.report(result, f'node rate ({result["model"]["source"]}): '
                          + '; '.join(summary(c, args.peak) for c in cases))


if __name__ == '__main__':
    main()
