"""``romav2_node``: RoMa v2 dense matching as a ROS 2 node (stereo or sequential).

Threading: subscription and synchroniser callbacks run on a SingleThreadedExecutor and only put
the latest synchronised set into a drop-oldest queue of size 1 (a newer set replaces an
unprocessed one; counted as ``dropped``). One worker thread owns the model: it builds it, warms
it up and runs :class:`~romav2_ros.pipeline.MatchingPipeline` on each set, then publishes.
Outputs are computed only for topics with subscribers and ``publish_<key>`` true.

Startup is all-or-nothing: publishers (outputs and ``/diagnostics``) and subscriptions are
created only after the model is built and warmed up; a model that cannot be built (missing,
truncated or foreign weights, bad parameters) ends the process with a message saying what to
do and exit status 1. (rclpy itself advertises ``/rosout``, ``/parameter_events`` and the
parameter services when the node object is created, before the model.)

Faults never end the worker: CUDA out-of-memory drops that pair (counted as ``oom``, the CUDA
cache is emptied) and any other exception is logged with its traceback and counted
(``worker_errors``, ``bad_input.internal_error``); both restart a sequence.

Topics, parameters and conventions: README.md (section "The node").
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import rclpy
import rclpy.exceptions
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from romav2_ros import matchers, params
from romav2_ros.diagnostics import Diagnostics
from romav2_ros.pipeline import OUTPUTS, VIZ_OUTPUTS, InputError, MatchingPipeline
from romav2_ros.sync import ApproximateTimeSynchronizer, ExactTimeSynchronizer, Subscriber

#: Seconds between repeated log lines of the same bad-input reason.
LOG_REPEAT_S = 30.0
INPUT_TOPICS = {'stereo': ('left/image_rect', 'left/camera_info', 'right/image_rect',
                           'right/camera_info'),
                'sequential': ('image', 'camera_info')}


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


def _output_type(key: str):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from romav2_ros.msg import RelativePose, SampledMatches
    from sensor_msgs.msg import Image
    from stereo_msgs.msg import DisparityImage
    return {'disparity': DisparityImage, 'matches': SampledMatches,
            'relative_pose': PoseWithCovarianceStamped,
            'relative_pose_info': RelativePose}.get(key, Image)


class RoMaV2Node(Node):
    """See the module docstring. Call :meth:`start` before spinning, :meth:`close` after."""

    def __init__(self, **kwargs):
        super().__init__('romav2_node', **kwargs)
        self.add_on_set_parameters_callback(params.validate)
        self.values = params.declare(self)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.mode = self.values['mode']
        self.device = params.resolve_device(self.values['device'])
        self.pipeline = None
        self.diagnostics = None
        self.queue = LatestQueue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure = None
        self._worker = threading.Thread(target=self._work, name='romav2_worker', daemon=True)
        self._last_log = {}
        self._last_viz = 0.0
        self.pubs = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Build the model on the worker thread, then open topics. Raises StartupError."""
        self._worker.start()
        while not self._ready.wait(0.1):
            pass
        if self._failure is not None:
            raise StartupError(_explain(self._failure, self.values)) from self._failure
        out_qos = params.qos_profile(self.values['output_qos'], self.values['output_qos_depth'])
        for key in OUTPUTS:
            if key == 'disparity' and self.mode != 'stereo':
                continue
            self.pubs[key] = self.create_publisher(_output_type(key), '~/' + key, out_qos)
        topics = INPUT_TOPICS[self.mode]
        resolved = self._input_names(topics)
        self.diagnostics = Diagnostics(self, ' and '.join(resolved), self.device,
                                       inputs=resolved)
        self._subscribe(topics)
        self.get_logger().info(
            f'ready: mode={self.mode}, model_source={self.values["model_source"]}, '
            f'device={self.device}, inputs={[self.resolve_topic_name(t) for t in topics]}')

    def close(self) -> None:
        """Stop and join the worker (idempotent)."""
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=30)

    def _input_names(self, topics) -> list:
        compressed = self.values['input_transport'] == 'compressed'
        return [self.resolve_topic_name(t + ('/compressed' if compressed and
                                             not t.endswith('camera_info') else ''))
                for t in topics]

    def _subscribe(self, topics) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        compressed = self.values['input_transport'] == 'compressed'
        qos = params.qos_profile(self.values['input_qos'], self.values['input_qos_depth'])
        filters = []
        for topic, name in zip(topics, self._input_names(topics)):
            if topic.endswith('camera_info'):
                sub = Subscriber(self, CameraInfo, topic, qos_profile=qos)
            else:
                sub = Subscriber(self, CompressedImage if compressed else Image,
                                 topic + '/compressed' if compressed else topic, qos_profile=qos)
                sub.registerCallback(lambda _msg: self.diagnostics.count('received'))
            sub.registerCallback(lambda _msg, name=name: self.diagnostics.seen(name))
            filters.append(sub)
        if self.values['approximate_sync']:
            self._sync = ApproximateTimeSynchronizer(filters, self.values['sync_queue_size'],
                                                     self.values['sync_slop'])
        else:
            self._sync = ExactTimeSynchronizer(filters, self.values['sync_queue_size'])
        self._sync.registerCallback(self._on_synchronized)

    def _on_synchronized(self, *msgs) -> None:
        """Executor thread: enqueue only (never model work here)."""
        self.diagnostics.count('synchronized')
        if self.queue.put(msgs):
            self.diagnostics.count('dropped')
        self.diagnostics.gauge('queue_depth', len(self.queue))

    def _apply_parameters(self, changed) -> None:
        for p in changed:
            self.values[p.name] = p.value
            if self.pipeline is not None and hasattr(self.pipeline.config, p.name):
                setattr(self.pipeline.config, p.name, p.value)

    # ------------------------------------------------------------------ worker thread
    def _build(self) -> None:
        """Matcher, warm-up and pipeline (worker thread, before any topic exists)."""
        matcher = matchers.create(self.values['model_source'], params.model_config(self.values),
                                  self.device, self.values['weights'],
                                  self.values['random_seed'])
        if self.values['warmup']:
            _warm_up(matcher, self.device)
        self.pipeline = MatchingPipeline(matcher, params.pipeline_config(self.values))

    def _work(self) -> None:
        try:
            self._build()
        except BaseException as exc:  # reported by start() on the main thread
            self._failure = exc
            return
        finally:
            self._ready.set()
        while not self._stop.is_set():
            item = self.queue.get(timeout=0.1)
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
            if self.mode == 'stereo':
                result = self.pipeline.process_stereo(*msgs, wanted)
            else:
                result = self.pipeline.process_sequential(*msgs, wanted)
        except InputError as exc:
            self._report(exc.code, exc.message)
            return
        if result is None:
            for note in self.pipeline.last_notes:  # e.g. a stamp jump restarting the sequence
                code, _, text = note.partition(': ')
                self._report(code, text)
            return
        t0 = time.perf_counter()
        for key, msg in result.messages.items():
            self.pubs[key].publish(msg)
        result.timings['publish'] = time.perf_counter() - t0
        self.diagnostics.latency(result.timings)
        self.diagnostics.count('processed')
        for note in result.notes:
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


def _warm_up(matcher, device: str) -> None:
    """One pair through the model (lazy init, compilation, autotuning) before topics open."""
    import torch
    h, w = matcher.output_hw
    x = torch.rand(1, 3, h, w, device=device)
    with torch.inference_mode():
        f = matcher.encode(x)
        matcher.match_features(f, f)


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
    return f'cannot build the matcher: {text}'


def main(args=None) -> int:
    rclpy.init(args=args)
    log = rclpy.logging.get_logger('romav2_node')
    node = None
    status = 0
    try:
        node = RoMaV2Node()
        node.start()
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
    if os.path.basename(sys.argv[0]) == 'romav2_node':
        # The console script: everything is shut down (worker joined, node destroyed, DDS
        # participant released), so skip the interpreter's teardown of torch and its
        # extensions, which takes 0.7 s to several seconds on a loaded machine and would
        # push SIGINT/SIGTERM shutdown past 2 s. In-process callers get the status back.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


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
