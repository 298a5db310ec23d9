"""``romav2_node`` / ``romav2_lifecycle_node``: RoMa v2 dense matching as a ROS 2 node.

Both executables run the same code (:class:`MatchingNodeCore`): the plain node configures and
activates itself at start; the managed node (``rclpy.lifecycle``, as Nav2 and Isaac ROS) waits
for a lifecycle manager, or does both itself with ``autostart:=true``:

==============  =====================================================================
transition      what happens
==============  =====================================================================
configure       build the matcher on the worker thread, load the weights, warm up; then
                create the publishers, ``/diagnostics`` and the subscriptions. A failure
                (missing or foreign weights, bad parameters) fails the transition with the
                reason in the log; the node stays unconfigured and alive.
activate        inputs are processed and outputs published.
deactivate      inputs are ignored (counted as ``ignored_inactive``), nothing is published;
                a sequence restarts at the next activation.
cleanup         subscriptions and publishers destroyed, the matcher and its GPU memory
                released; back to unconfigured.
shutdown        from any state: as cleanup, then the node is finalized.
==============  =====================================================================

Threading: subscription and synchroniser callbacks run on a SingleThreadedExecutor and only put
the latest synchronised set into a drop-oldest queue of size 1 (a newer set replaces an
unprocessed one; counted as ``dropped``). One worker thread owns the matcher: it builds it,
warms it up and runs :class:`~romav2_ros.pipeline.MatchingPipeline` on each set, then
publishes. Outputs are computed only for topics with subscribers and ``publish_<key>`` true.
Each set is processed with one snapshot of the runtime parameters.

Faults never end the worker: CUDA out-of-memory drops that pair (counted as ``oom``, the CUDA
cache is emptied) and any other exception is logged with its traceback and counted
(``worker_errors``, ``bad_input.internal_error``); both restart a sequence.

Topics, parameters and conventions: README.md (section "The node").
"""
from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback

import rclpy
import rclpy.exceptions
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from romav2_ros import matchers, messages, params
from romav2_ros.diagnostics import Diagnostics
from romav2_ros.pipeline import TF, VIZ_OUTPUTS, InputError, MatchingPipeline, mode_outputs
from romav2_ros import sync as synchronizers
from romav2_ros.sync import Subscriber

#: Seconds between repeated log lines of the same bad-input reason.
LOG_REPEAT_S = 30.0
_STEREO_TOPICS = ('left/image_rect', 'left/camera_info', 'right/image_rect',
                  'right/camera_info')
INPUT_TOPICS = {'stereo': _STEREO_TOPICS, 'sequential': ('image', 'camera_info'),
                'stereo_odometry': _STEREO_TOPICS}
#: TF broadcasting as tf2_ros.TransformBroadcaster does it: /tf, reliable, depth 100.
TF_TOPIC, TF_DEPTH = '/tf', 100
NODE_NAME = 'romav2_node'


class StartupError(RuntimeError):
    """The node cannot start; the message says what to do."""


class LatestQueue:
    """A queue holding at most one item: ``put`` replaces (drops) an unconsumed one."""

    def __init__(self):
        self._item = None
        self._cond = threading.Condition()

    def put(self, item) -> bool:
        """Store ``item``; True when it replaced an item that was never taken."""
        with self._cond:
            dropped = self._item is not None
            self._item = item
            self._cond.notify()
            return dropped

    def get(self, timeout: float):
        """The item, or None after ``timeout`` seconds."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def __len__(self) -> int:
        return int(self._item is not None)


class MatchingNodeCore:
    """The node's behaviour, mixed into an rclpy ``Node`` or ``LifecycleNode``.

    The transitions (:meth:`_configure`, :meth:`_activate`, :meth:`_deactivate`,
    :meth:`_cleanup`) are those of the module docstring's table; the plain node runs the
    first two at start and the last at exit.
    """

    def _init_core(self, extra_params: tuple = ()) -> None:
        self.add_on_set_parameters_callback(params.validate)
        values = params.declare(self, extra_params)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._init_state(values)

    def _init_state(self, values: dict) -> None:
        """Everything but the rclpy declarations (``values``: parameter name -> value)."""
        self.values = values
        self.mode = self.values['mode']
        self.device = params.resolve_device(self.values['device'])
        self.pipeline = None
        self.diagnostics = None
        self.queue = LatestQueue()
        self.pubs = {}
        self._tf_pub = None
        self._subs = []
        self._worker = None
        self._stop = threading.Event()
        self._active = False
        self._generation = 0          # bumped at activation: the worker restarts sequences
        self._last_log = {}
        self._last_viz = 0.0

    # ------------------------------------------------------------------ transitions
    def _configure(self) -> None:
        """Matcher (worker thread), publishers, diagnostics, subscriptions. StartupError."""
        self._start_worker()
        self._open_topics()
        self.get_logger().info(f'configured (inactive): mode={self.mode}')

    def _start_worker(self) -> None:
        """The worker thread: it builds the pipeline, then processes; StartupError."""
        ready, failure = threading.Event(), []
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, args=(ready, failure),
                                        name='romav2_worker', daemon=True)
        self._worker.start()
        while not ready.wait(0.1):
            pass
        if failure:
            self._worker.join()
            self._worker = None
            raise StartupError(_explain(failure[0], self.values)) from failure[0]

    def _open_topics(self) -> None:
        out_qos = params.qos_profile(self.values['output_qos'], self.values['output_qos_depth'])
        for key in mode_outputs(self.mode):
            self.pubs[key] = self._create_output_publisher(messages.output_type(key), '~/' + key,
                                                           out_qos)
        if self.mode == 'stereo_odometry' and self.values['publish_tf']:
            self._tf_pub = self._create_tf_publisher()
        topics = INPUT_TOPICS[self.mode]
        resolved = self._input_names(topics)
        self.diagnostics = self._new_diagnostics(resolved)
        self._update_health_limits()
        self._subscribe(topics)

    def _activate(self) -> None:
        self._generation += 1
        self._active = True
        if self.diagnostics is not None:
            self.diagnostics.state = 'active'
        # launch files (replay.launch.py) wait for this line
        self.get_logger().info(
            f'ready: mode={self.mode}, model_source={self.values["model_source"]}, '
            f'device={self.device}, inputs={self._input_names(INPUT_TOPICS[self.mode])}')

    def _deactivate(self) -> None:
        self._active = False
        if self.queue.get(0.0) is not None:
            self.diagnostics.count('ignored_inactive')
        self.diagnostics.state = 'inactive'

    def _cleanup(self) -> None:
        """Stop and join the worker, destroy topics, release the matcher (idempotent)."""
        self._active = False
        self._stop.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=30)
        self._worker = None
        for sub in self._subs:
            self.destroy_subscription(sub.sub)
        self._subs = []
        for pub in self.pubs.values():
            self._destroy_output_publisher(pub)
        self.pubs = {}
        if self._tf_pub is not None:
            self._destroy_output_publisher(self._tf_pub[0])
            self._tf_pub = None
        if self.diagnostics is not None:
            self.diagnostics.close()
            self.diagnostics = None
        self.queue.get(0.0)
        self.pipeline = None
        if str(self.device).startswith('cuda'):   # give the matcher's memory back now
            import torch
            gc.collect()
            torch.cuda.empty_cache()

    def _create_output_publisher(self, msg_type, topic, qos):
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, pub) -> None:
        self.destroy_publisher(pub)

    def _new_diagnostics(self, inputs: list) -> Diagnostics:
        return Diagnostics(self, ' and '.join(inputs), self.device, inputs=inputs,
                           mode=self.mode)

    def _create_tf_publisher(self):
        """(publisher, TFMessage) for /tf, or None with a warning when tf2_msgs is missing
        (a ROS install has it; the PyPI wheels do not)."""
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.get_logger().warn('publish_tf: tf2_msgs is not installed, so no TF is '
                                   'broadcast (~/odometry carries the same pose)')
            return None
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        qos = QoSProfile(depth=TF_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        return self._create_output_publisher(TFMessage, TF_TOPIC, qos), TFMessage

    # ------------------------------------------------------------------ inputs
    def _input_names(self, topics) -> list:
        compressed = self.values['input_transport'] == 'compressed'
        return [self.resolve_topic_name(t + ('/compressed' if compressed and
                                             not t.endswith('camera_info') else ''))
                for t in topics]

    def _subscribe(self, topics) -> None:
        compressed = self.values['input_transport'] == 'compressed'
        qos = params.qos_profile(self.values['input_qos'], self.values['input_qos_depth'])
        for topic, name in zip(topics, self._input_names(topics)):
            if topic.endswith('camera_info'):
                sub = Subscriber(self, CameraInfo, topic, qos_profile=qos)
            else:
                sub = Subscriber(self, CompressedImage if compressed else Image,
                                 topic + '/compressed' if compressed else topic,
                                 qos_profile=qos)
                sub.registerCallback(lambda _msg: self.diagnostics.count('received'))
            sub.registerCallback(lambda _msg, name=name: self.diagnostics.seen(name))
            self._subs.append(sub)
        sync = synchronizers.from_parameters(self._subs, self.values)
        sync.registerCallback(self._on_synchronized)
        sync.registerDropCallback(lambda reason, msg: self._report(
            'late_input', 'a set not newer than the last synchronised one arrived late and '
                          'was dropped (a sequence is never restarted for it)'))

    def _on_synchronized(self, *msgs) -> None:
        """Executor thread: enqueue only (never model work here)."""
        self.diagnostics.count('synchronized')
        if not self._active:
            self.diagnostics.count('ignored_inactive')
            return
        if self.queue.put(msgs):
            self.diagnostics.count('dropped')
        self.diagnostics.gauge('queue_depth', len(self.queue))

    def _apply_parameters(self, changed) -> None:
        for p in changed:
            self.values[p.name] = p.value
        if self.pipeline is not None:  # a new snapshot; the set being processed keeps its own
            self.pipeline.config = params.pipeline_config(self.values)
        self._update_health_limits()

    def _update_health_limits(self) -> None:
        if self.diagnostics is not None:
            self.diagnostics.health_limits = {k: self.values[k] for k in
                                              ('rectification_warn_px', 'baseline_warn_deg')}

    # ------------------------------------------------------------------ worker thread
    def _build_pipeline(self) -> None:
        """Matcher, warm-up and pipeline (on the thread that will own the matcher)."""
        matcher = matchers.create(self.values['model_source'], params.model_config(self.values),
                                  self.device, self.values['weights'],
                                  self.values['random_seed'])
        if self.values['warmup']:
            matchers.warm_up(matcher, self.device, self.mode)
        self.pipeline = MatchingPipeline(matcher, params.pipeline_config(self.values))

    def _work(self, ready: threading.Event, failure: list) -> None:
        try:
            self._build_pipeline()
        except BaseException as exc:  # reported by _configure on the executor thread
            failure.append(exc)
            return
        finally:
            ready.set()
        generation = self._generation
        while not self._stop.is_set():
            item = self.queue.get(timeout=0.1)
            if generation != self._generation:   # re-activated: a fresh sequence
                generation = self._generation
                self.pipeline.reset()
            if item is not None:
                self._handle(item)

    def _handle(self, item) -> None:
        """One synchronised set; never raises (the worker must survive anything)."""
        try:
            self.diagnostics.gauge('queue_depth', len(self.queue))
            self._process(item)
        except Exception as exc:  # noqa: BLE001
            try:
                self._fault(exc)
            except Exception:  # noqa: BLE001 - even the accounting failed: stderr, go on
                traceback.print_exc()

    def _wanted(self) -> set:
        wanted = {k for k, pub in self.pubs.items()
                  if self.values[f'publish_{k}'] and pub.get_subscription_count() > 0}
        if self._tf_pub is not None:   # TF listeners come and go: broadcast always
            wanted.add(TF)
        rate = self.values['viz_rate']
        if wanted & set(VIZ_OUTPUTS):
            now = time.monotonic()
            if rate > 0 and now - self._last_viz < 1.0 / rate:
                wanted -= set(VIZ_OUTPUTS)
            else:
                self._last_viz = now
        return wanted

    def _process(self, msgs) -> None:
        wanted = self._wanted()
        if not wanted:
            # Lazy: nobody listens. A sequence restarts when someone subscribes again.
            self.diagnostics.count('skipped')
            self.pipeline.reset()
            return
        try:
            result = self.pipeline.process(msgs, wanted)
        except InputError as exc:
            self._report(exc.code, exc.message)
            return
        if result.health is not None:
            self.diagnostics.health(result.health)
        if result.odometry_state is not None:
            self.diagnostics.odometry(result.odometry_state, result.odometry_quality)
        if result.paired:
            if not self._active:   # deactivated while this set was being processed
                self.diagnostics.count('ignored_inactive')
                return
            t0 = time.perf_counter()
            for key, msg in result.messages.items():
                self.pubs[key].publish(msg)
            if result.transform is not None and self._tf_pub is not None:
                pub, TFMessage = self._tf_pub
                pub.publish(TFMessage(transforms=[result.transform]))
            result.timings['publish'] = time.perf_counter() - t0
            self.diagnostics.latency(result.timings)
            self.diagnostics.count('processed')
        for note in result.notes:  # e.g. a stamp jump restarting the sequence
            code, _, text = note.partition(': ')
            self._report(code, text)

    def _fault(self, exc: Exception) -> None:
        """An exception in the worker: the pair is lost, the node goes on.

        CUDA out of memory (a large image, another process on the GPU) is counted as ``oom``
        and the CUDA cache is emptied so the next pair can get memory again; anything else is
        logged with its traceback and counted as ``worker_errors`` (and, as documented before,
        ``bad_input.internal_error``). A sequence restarts: the previous frame's features may
        be what the failure left behind.
        """
        import torch
        if self.pipeline is not None:
            self.pipeline.reset()
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            if str(self.device).startswith('cuda'):
                torch.cuda.empty_cache()
            self.diagnostics.count('oom')
            self._log_limited('oom', f'CUDA out of memory, pair dropped ({exc}); lower '
                                     f'H_lr/W_lr/H_hr/W_hr or the setting if this repeats',
                              self.diagnostics.counts['oom'])
            return
        self.diagnostics.count('worker_errors')
        self.diagnostics.error('internal_error')
        self._log_limited('internal_error', f'unexpected {type(exc).__name__} in the worker, '
                                            f'pair dropped, node continues:\n'
                                            f'{traceback.format_exc()}',
                          self.diagnostics.counts['worker_errors'], error=True)

    def _log_limited(self, code: str, text: str, count: int, error: bool = False) -> bool:
        """Log ``text`` the first time ``code`` is seen, then at most every LOG_REPEAT_S."""
        now = time.monotonic()
        last = self._last_log.get(code)
        if last is not None and now - last <= LOG_REPEAT_S:
            return False
        self._last_log[code] = now
        line = (f'{text} (seen {count}x; counted in /diagnostics, repeated at most every '
                f'{LOG_REPEAT_S:.0f} s)')
        # Separate call sites: rclpy refuses two severities from one line of code.
        if error:
            self.get_logger().error(line)
        else:
            self.get_logger().warn(line)
        return True

    def _report(self, code: str, text: str) -> None:
        """Count a bad-input reason; log it the first time, then every LOG_REPEAT_S."""
        self.diagnostics.error(code)
        self._log_limited(code, f'bad input [{code}]: {text}', self.diagnostics.errors[code])


class RoMaV2Node(MatchingNodeCore, Node):
    """The plain node: :meth:`start` configures and activates (raises StartupError),
    :meth:`close` cleans up."""

    def __init__(self, **kwargs):
        Node.__init__(self, NODE_NAME, **kwargs)
        self._init_core()

    def start(self) -> None:
        self._configure()
        self._activate()

    def close(self) -> None:
        self._cleanup()


class RoMaV2LifecycleNode(MatchingNodeCore, LifecycleNode):
    """The managed node: the transitions of the module docstring's table."""

    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, NODE_NAME, **kwargs)
        self._init_core(params.LIFECYCLE_PARAMS)

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (StartupError, ValueError, rclpy.exceptions.ParameterException) as exc:
            self.get_logger().error(f'configure failed, staying unconfigured: {exc}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        self.diagnostics.state = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _create_output_publisher(self, msg_type, topic, qos):
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, pub) -> None:
        self.destroy_lifecycle_publisher(pub)

    def close(self) -> None:
        self._cleanup()


def _explain(exc: BaseException, values: dict) -> str:
    """A startup failure as a message that says what to do."""
    text = f'{type(exc).__name__}: {exc}'
    if isinstance(exc, FileNotFoundError) or (isinstance(exc, (RuntimeError, OSError))
                                              and values['model_source'] == 'pretrained'):
        return (f'cannot load the RoMa v2 weights ({text}). Give a local checkpoint with '
                f'weights:=/path/to/romav2.pt, or run once with network access to fill the '
                f'download cache, or use model_source:=random for a demo without weights.')
    if isinstance(exc, ImportError):
        return f'cannot import the matcher ({text}); check model_source and the installation.'
    if isinstance(exc, ValueError):
        return f'invalid parameters: {exc}'
    return f'cannot build the matcher: {text}'


def _run(make_node, start) -> int:
    """Create the node, ``start(node)``, spin until SIGINT/SIGTERM; the exit status."""
    log = rclpy.logging.get_logger(NODE_NAME)
    node = None
    status = 0
    try:
        node = make_node()
        start(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError as exc:
        log.fatal(str(exc))
        status = 1
    except (ValueError, rclpy.exceptions.ParameterException) as exc:
        log.fatal(f'invalid parameters: {exc}')
        status = 1
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM shut the context down while the executor was being created or was
        # building its wait set: rclpy raises RCLError ("context is not valid") instead of
        # ExternalShutdownException there. That is a requested shutdown, not a failure.
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        _release_context()
    if os.path.basename(sys.argv[0]) in ('romav2_node', 'romav2_lifecycle_node'):
        # The console script: everything is shut down (worker joined, node destroyed, DDS
        # participant released), so skip the interpreter's teardown of torch and its
        # extensions, which takes 0.7 s to several seconds on a loaded machine and would
        # push SIGINT/SIGTERM shutdown past 2 s. In-process callers get the status back.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _autostart(node: RoMaV2LifecycleNode) -> None:
    if node.values['autostart'] and \
            node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()


def main(args=None) -> int:
    """``romav2_node``: configure and activate at start; exit 1 when that fails."""
    rclpy.init(args=args)
    return _run(RoMaV2Node, RoMaV2Node.start)


def lifecycle_main(args=None) -> int:
    """``romav2_lifecycle_node``: a managed node (``autostart:=true`` to bring it up)."""
    rclpy.init(args=args)
    return _run(RoMaV2LifecycleNode, _autostart)


def _release_context() -> None:
    """Destroy the default rclpy context now (its DDS participant and shared memory)
    rather than whenever the garbage collector gets to it."""
    try:
        from rclpy.utilities import get_default_context
        context = get_default_context()
        destroy = getattr(context, 'destroy', None)
        if destroy is not None:
            destroy()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


if __name__ == '__main__':
    sys.exit(main())
