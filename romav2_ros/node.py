"""``romav2_node`` / ``romav2_lifecycle_node``: RoMa v2 dense matching as a ROS 2 node.

Both executables run the same code (:class:`MatchingNodeCore`): the plain node configures and
activates itself at start; the managed node (``rclpy.lifecycle``, as Nav2 and Isaac ROS) waits
for a lifecycle manager, or does both itself with ``autostart:=true``:

==============  =====================================================================
transition      what happens
==============  =====================================================================
configure       build the matcher on the model stage's thread, load the weights, warm up;
                then create the publishers, ``/diagnostics`` and the subscriptions. A
                failure (missing or foreign weights, bad parameters, anything else) fails
                the transition with the reason in the log; the node stays unconfigured and
                alive, with no thread left running.
activate        inputs are processed and outputs published.
deactivate      inputs are ignored (counted as ``ignored_inactive``), nothing is published;
                a sequence restarts at the next activation.
cleanup         subscriptions and publishers destroyed, the stage threads stopped and joined,
                the matcher and its GPU memory released; back to unconfigured.
shutdown        from any state: as cleanup, then the node is finalized.
==============  =====================================================================

Threading: subscription and synchroniser callbacks only put the latest synchronised set into a
drop-oldest queue of size 1 (a newer set replaces an unprocessed one; counted as ``dropped``).
Three stage threads then run :class:`~romav2_ros.pipeline.MatchingPipeline`: the **decode
stage** (``romav2_decode``) decodes each set with the parameters of that moment (nothing while
no output has a subscriber) into a second drop-oldest queue of size 1 (``dropped`` too: sets
are dropped in these two queues, before the model, and nowhere else); the **model stage**
(``romav2_model``) builds and warms up the matcher, then for each decoded set matches and
starts its products on the device; it hands the set to the **host stage** (``romav2_host``)
through a queue of :data:`~romav2_ros.stages.HANDOFF_DEPTH` sets, and takes its next set only
when that queue has room (so a set whose model work is done is always delivered, and while
the host stage is the slower one the model works on the freshest set). The host stage poses,
builds and publishes the messages, in arrival order. So set n+2 is decoded and the model runs
on set n+1 while set n is posed and published. Outputs are computed only for topics with
subscribers and ``publish_<key>`` true; each set is processed with one snapshot of the runtime
parameters and of those subscribers, taken when it is decoded. Each configuration has its own
stage threads and queues (:class:`~romav2_ros.stages.Stages`), which a cleanup stops and
joins. The executor (:class:`~romav2_ros.executor.InputFirstExecutor`) runs the input
callbacks on its spinning thread and everything else on a pool of threads
(``romav2_ros/process.py``: the process around the node); the lifecycle services have their
own callback group, so parameter and lifecycle services answer while the model is being
built.

Faults never end a stage thread: CUDA out-of-memory drops that set (counted as ``oom``; the
failed set's tensors are let go, then the CUDA cache is emptied) and any other exception is
logged with its traceback and counted (``worker_errors``, ``bad_input.internal_error``); both
restart a sequence.

Topics, parameters and conventions: README.md (section "The node").
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import traceback

import rclpy
import rclpy.exceptions
import torch
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNodeMixin, TransitionCallbackReturn
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from romav2_ros import matchers, messages, params, process, static_tf
from romav2_ros.bond import ManagedNodeBond
from romav2_ros.diagnostics import Diagnostics
from romav2_ros.executor import InlineCallbackGroup
from romav2_ros.pipeline import TF, VIZ_OUTPUTS, Decoded, Inferred, InputError, \
    MatchingPipeline, mode_outputs
from romav2_ros.process import StartupError
from romav2_ros import sync as synchronizers
from romav2_ros.stages import Stages
from romav2_ros.sync import Subscriber

#: Seconds between repeated log lines of the same bad-input reason.
LOG_REPEAT_S = 30.0
#: Seconds a cleanup waits for the stage threads (a model call on a CPU can take that long).
JOIN_TIMEOUT_S = 60.0
_STEREO_TOPICS = ('left/image_rect', 'left/camera_info', 'right/image_rect',
                  'right/camera_info')
INPUT_TOPICS = {'stereo': _STEREO_TOPICS, 'sequential': ('image', 'camera_info'),
                'stereo_odometry': _STEREO_TOPICS}
#: TF broadcasting as tf2_ros.TransformBroadcaster does it: /tf, reliable, depth 100.
TF_TOPIC, TF_DEPTH = '/tf', 100
NODE_NAME = 'romav2_node'


class MatchingNodeCore:
    """The node's behaviour, mixed into an rclpy ``Node`` or ``LifecycleNode``.

    The transitions (:meth:`_configure`, :meth:`_activate`, :meth:`_deactivate`,
    :meth:`_cleanup`) are those of the module docstring's table; the plain node runs the
    first two at start and the last at exit.
    """

    def _init_core(self, extra_params: tuple = ()) -> None:
        self.values = None
        self.add_on_set_parameters_callback(lambda ps: params.validate(ps, self.values))
        values = params.declare(self, extra_params)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._init_state(values)

    def _init_state(self, values: dict) -> None:
        """Everything but the rclpy declarations (``values``: parameter name -> value)."""
        self.values = values
        self.mode = self.values['mode']
        self.device = params.resolve_device(self.values['device'])
        self.diagnostics = None
        self.pubs = {}
        self._tf_pub = None
        self._subs = []
        self._sync = None
        self._input_group = InlineCallbackGroup()   # enqueue only: run on the spinning thread
        self._stages: Stages | None = None
        self._mounts = None           # stereo_odometry with base_frame: static_tf
        self._active = False
        self._generation = 0          # bumped at activation: the stages restart sequences
        self._last_log = {}
        self._last_viz = 0.0

    @property
    def pipeline(self) -> MatchingPipeline | None:
        return None if self._stages is None else self._stages.pipeline

    # ------------------------------------------------------------------ transitions
    def _configure(self) -> None:
        """Matcher (on the model stage's thread), publishers, diagnostics, subscriptions.
        StartupError."""
        self._mounts = static_tf.camera_mounts(self.values, node=self)
        self._stages = Stages(self)        # a cleanup meanwhile (SIGINT) stops it too
        try:
            failure = self._stages.start(JOIN_TIMEOUT_S)
        except BaseException:
            self._stages = None
            raise
        if failure is not None:
            self._stages = None
            raise StartupError(_explain(failure, self.values)) from failure
        self._open_topics()
        self.get_logger().info(f'configured (inactive): mode={self.mode}')

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
        if self._stages is not None:
            for waiting in (self._stages.inputs, self._stages.decoded):
                if waiting.get(0.0) is not None:
                    self.diagnostics.count('ignored_inactive')
        self.diagnostics.state = 'inactive'

    def _cleanup(self) -> None:
        """Stop and join the stage threads, destroy topics, release the matcher
        (idempotent)."""
        self._active = False
        stages, self._stages = self._stages, None
        if stages is not None and not stages.close(JOIN_TIMEOUT_S):
            self.get_logger().warn(f'a stage thread is still inside a model call after '
                                   f'{JOIN_TIMEOUT_S:.0f} s; it publishes nothing and ends '
                                   f'after that call')
        for sub in self._subs:
            self.destroy_subscription(sub.sub)
        self._subs = []
        self._sync = None
        if isinstance(self._mounts, static_tf.StaticTfListener):
            self._mounts.destroy()
        self._mounts = None
        for pub in self.pubs.values():
            self._destroy_output_publisher(pub)
        self.pubs = {}
        if self._tf_pub is not None:
            self._destroy_output_publisher(self._tf_pub[0])
            self._tf_pub = None
        if self.diagnostics is not None:
            self.diagnostics.close()
            self.diagnostics = None
        del stages
        if str(self.device).startswith('cuda'):   # give the matcher's memory back now
            gc.collect()
            torch.cuda.empty_cache()

    def _create_output_publisher(self, msg_type, topic, qos):
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, pub) -> None:
        self.destroy_publisher(pub)

    def _new_diagnostics(self, inputs: list) -> Diagnostics:
        return Diagnostics(self, ' and '.join(inputs), self.device, inputs=inputs,
                           mode=self.mode, output_publishers=lambda: {**self.pubs, **(
                               {TF: self._tf_pub[0]} if self._tf_pub is not None else {})})

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
                sub = Subscriber(self, CameraInfo, topic, qos_profile=qos,
                                 callback_group=self._input_group)
            else:
                sub = Subscriber(self, CompressedImage if compressed else Image,
                                 topic + '/compressed' if compressed else topic,
                                 qos_profile=qos, callback_group=self._input_group)
                sub.registerCallback(lambda _msg: self.diagnostics.count('received'))
            sub.registerCallback(lambda _msg, name=name: self.diagnostics.seen(name))
            self._subs.append(sub)
        self._sync = synchronizers.from_parameters(self._subs, self.values)
        self._sync.registerCallback(self._on_synchronized)
        self._sync.registerDropCallback(lambda reason, msg: self._report(
            'late_input', 'a set not newer than the last synchronised one arrived late and '
                          'was dropped (a sequence is never restarted for it)'))

    def _on_synchronized(self, *msgs) -> None:
        """Executor thread: enqueue only (never model work here)."""
        self.diagnostics.count('synchronized')
        stages = self._stages
        if not self._active or stages is None:
            self.diagnostics.count('ignored_inactive')
            return
        if stages.inputs.put(msgs):
            self.diagnostics.count('dropped')
        self.diagnostics.gauge('queue_depth', len(stages.inputs))

    def _apply_parameters(self, changed) -> None:
        for p in changed:
            self.values[p.name] = p.value
        pipeline = self.pipeline
        if pipeline is not None:  # a new snapshot; the set being processed keeps its own
            pipeline.config = params.pipeline_config(self.values)
        if self._sync is not None:
            self._sync.max_stamp_jump = self.values['max_stamp_jump']
        self._update_health_limits()

    def _update_health_limits(self) -> None:
        if self.diagnostics is not None:
            self.diagnostics.health_limits = {k: self.values[k] for k in
                                              ('rectification_warn_px', 'baseline_warn_deg')}

    # ------------------------------------------------------------------ the stages
    def _build_pipeline(self) -> MatchingPipeline:
        """Matcher, warm-up and pipeline (on the thread that will own the matcher)."""
        matcher = matchers.create(self.values['model_source'], params.model_config(self.values),
                                  self.device, self.values['weights'],
                                  self.values['random_seed'])
        if self.values['warmup']:
            matchers.warm_up(matcher, self.device, self.mode)
        return MatchingPipeline(matcher, params.pipeline_config(self.values), self._mounts)

    def _decode_step(self, stages: Stages, msgs) -> None:
        """Decode stage, one synchronised set (skipped while nobody listens); never raises."""
        try:
            self.diagnostics.gauge('queue_depth', len(stages.inputs))
            listened = self._listened()
            if not listened:
                self._skip(stages)
                return
            if stages.decoded.put((stages.pipeline.decode(msgs), listened)):
                self.diagnostics.count('dropped')
            self.diagnostics.gauge('decoded_depth', len(stages.decoded))
        except Exception as exc:  # noqa: BLE001
            self._fault(stages, exc)

    def _model_step(self, stages: Stages, item: tuple[Decoded, set]) -> None:
        """Model stage, one decoded set and the outputs listened to when it was decoded;
        never raises (the thread must survive)."""
        try:
            self.diagnostics.gauge('decoded_depth', len(stages.decoded))
            decoded, listened = item
            wanted = self._wanted(listened)
            if not wanted:
                self._skip(stages)
                return
            out = stages.pipeline.infer([decoded], wanted)[0]
            if isinstance(out, InputError):
                self._report(out.code, out.message)
                return
            self.diagnostics.count('model_sets')
            if stages.hand_over(out):
                self.diagnostics.gauge('handoff_depth', stages.handoff.qsize())
        except Exception as exc:  # noqa: BLE001
            stages.pipeline.reset()            # this thread owns the sequence: at once
            self._fault(stages, exc)

    def _skip(self, stages: Stages) -> None:
        """Lazy: nobody listens. A sequence restarts when someone subscribes again."""
        self.diagnostics.count('skipped')
        stages.reset_requested.set()

    def _host_step(self, stages: Stages, item: Inferred) -> None:
        """Host stage, one set from the model stage; never raises."""
        try:
            result = stages.pipeline.finish(item)
            self._deliver(stages, result)
        except Exception as exc:  # noqa: BLE001
            self.diagnostics.count('lost_after_model')
            self._fault(stages, exc)

    def _listened(self) -> set:
        """The outputs to publish: with subscribers and ``publish_<key>`` true."""
        listened = {k for k, pub in self.pubs.items()
                    if self.values[f'publish_{k}'] and pub.get_subscription_count() > 0}
        if self._tf_pub is not None:   # TF listeners come and go: broadcast always
            listened.add(TF)
        return listened

    def _wanted(self, listened: set) -> set:
        """The outputs of the set the model stage takes now: the ``listened`` ones, the
        pictures at most ``viz_rate`` times a second."""
        wanted = set(listened)
        rate = self.values['viz_rate']
        if wanted & set(VIZ_OUTPUTS):
            now = time.monotonic()
            if rate > 0 and now - self._last_viz < 1.0 / rate:
                wanted -= set(VIZ_OUTPUTS)
            else:
                self._last_viz = now
        return wanted

    def _deliver(self, stages: Stages, result) -> None:
        """Publish a finished set (unless its configuration ended or the node was
        deactivated meanwhile) and account for it."""
        if result.health is not None:
            self.diagnostics.health(result.health)
        if result.odometry_state is not None:
            self.diagnostics.odometry(result.odometry_state, result.odometry_quality)
        if result.paired:
            if not self._active or stages is not self._stages:
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

    def _fault(self, stages: Stages, exc: Exception) -> None:
        """An exception in a stage: the set is lost, the node goes on.

        CUDA out of memory (a large image, another process on the GPU) is counted as ``oom``;
        the failed set's tensors -- still referenced by the exception's frames -- are let go
        before the CUDA cache is emptied, so the next set can get that memory. Anything else
        is logged with its traceback and counted as ``worker_errors`` (and, as documented
        before, ``bad_input.internal_error``). A sequence restarts (on the model stage's
        thread, before its next set): the previous frame's features may be what the failure
        left behind.
        """
        try:
            stages.reset_requested.set()
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                # the set's tensors: its frames (the sequence's reset let go of the previous
                # ones) and the locals of the calls the exception went through
                text = str(exc)
                _release_frames(exc)
                del exc
                if str(self.device).startswith('cuda'):
                    gc.collect()
                    torch.cuda.empty_cache()
                self.diagnostics.count('oom')
                self._log_limited('oom', f'CUDA out of memory, set dropped ({text}); lower '
                                         f'H_lr/W_lr/H_hr/W_hr or the setting if this repeats',
                                  self.diagnostics.counts['oom'])
                return
            self.diagnostics.count('worker_errors')
            self.diagnostics.error('internal_error')
            self._log_limited('internal_error', f'unexpected {type(exc).__name__} in the '
                                                f'{threading.current_thread().name} stage, set '
                                                f'dropped, node continues:\n'
                                                f'{"".join(traceback.format_exception(exc))}',
                              self.diagnostics.counts['worker_errors'], error=True)
        except Exception:  # noqa: BLE001 - even the accounting failed: stderr, go on
            traceback.print_exc()

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


def _release_frames(exc: BaseException) -> None:
    """Let go of the locals (tensors) that ``exc``'s traceback frames hold."""
    tb = exc.__traceback__
    if tb is not None:
        traceback.clear_frames(tb)
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None


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


class RoMaV2LifecycleNode(MatchingNodeCore, LifecycleNodeMixin, Node):
    """The managed node: the transitions of the module docstring's table. Its lifecycle
    services have their own (reentrant) callback group, so ``get_state`` answers during a
    long ``configure``."""

    def __init__(self, **kwargs):
        Node.__init__(self, NODE_NAME, **kwargs)
        LifecycleNodeMixin.__init__(self, callback_group=ReentrantCallbackGroup())
        self._init_core(params.LIFECYCLE_PARAMS)
        # the bond a Nav2 lifecycle_manager waits for after activating the node
        self._bond = ManagedNodeBond(self, self.values['bond_heartbeat_period'])

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the node unconfigured
            text = str(exc) if isinstance(exc, StartupError) else \
                f'{type(exc).__name__}: {exc}'
            self.get_logger().error(f'configure failed, staying unconfigured: {text}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        self.diagnostics.state = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._activate()
        self._bond.start()
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._bond.stop()
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._bond.stop()
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _create_output_publisher(self, msg_type, topic, qos):
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, pub) -> None:
        self.destroy_lifecycle_publisher(pub)

    def close(self) -> None:
        self._bond.stop()
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


def _autostart(node: RoMaV2LifecycleNode) -> None:
    if node.values['autostart'] and \
            node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()


def main(args=None) -> int:
    """``romav2_node``: configure and activate at start; exit 1 when that fails."""
    rclpy.init(args=args)
    return process.run(RoMaV2Node, RoMaV2Node.start, NODE_NAME)


def lifecycle_main(args=None) -> int:
    """``romav2_lifecycle_node``: a managed node (``autostart:=true`` to bring it up)."""
    rclpy.init(args=args)
    return process.run(RoMaV2LifecycleNode, _autostart, NODE_NAME)


if __name__ == '__main__':
    sys.exit(main())
