"""The node's worker logic without rclpy or DDS: :class:`MatchingNodeCore` (the code both
node executables run) on a stand-in object with recording publishers and logger.

Queueing, the stage threads, processing, fault handling and accounting are the node's own
methods, unchanged; only what needs an rclpy context (publishers, the logger, ``/diagnostics``
publishing, subscriptions, subscriber counts) is replaced.
"""
from __future__ import annotations

import time

from romav2_ros import params
from romav2_ros.diagnostics import Diagnostics
from romav2_ros.node import MatchingNodeCore
from romav2_ros.stages import Stages


class RecordingLogger:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def _log(self, level, text):
        self.lines.append((level, text))

    def info(self, text):
        self._log('info', text)

    def warn(self, text):
        self._log('warn', text)

    warning = warn

    def error(self, text):
        self._log('error', text)

    def text(self) -> str:
        return '\n'.join(t for _, t in self.lines)


class RecordingPublisher:
    def __init__(self):
        self.messages = []

    def publish(self, msg):
        self.messages.append(msg)


class InProcessNode(MatchingNodeCore):
    """The node's behaviour; ``wanted``: the outputs "subscribed"."""

    def __init__(self, mode: str = 'stereo', model_source: str = 'fault_matchers:shift',
                 wanted=('warp', 'certainty', 'matches'), device: str = 'cpu', **overrides):
        values = {p.name: p.default for p in params.PARAMS}
        values.update(mode=mode, model_source=model_source, warmup=False, device='cpu',
                      **overrides)
        self._init_state(values)
        self.device = device
        self.logger = RecordingLogger()
        self.wanted = set(wanted)
        self.synchronized = 0          # sets given to the node's input callback
        self.taken = 0                 # sets the model stage took

    # ------------------------------------------------------------------ the rclpy seams
    def get_logger(self):
        return self.logger

    def _listened(self):
        return set(self.wanted)

    def _on_synchronized(self, *msgs) -> None:
        self.synchronized += 1
        super()._on_synchronized(*msgs)

    def _model_step(self, stages, item) -> None:
        self.taken += 1
        super()._model_step(stages, item)

    def _create_output_publisher(self, msg_type, topic, qos):
        return RecordingPublisher()

    def _destroy_output_publisher(self, pub) -> None:
        pass

    def _new_diagnostics(self, inputs: list) -> Diagnostics:
        return Diagnostics(None, ' and '.join(inputs), self.device, inputs=inputs,
                           mode=self.mode)

    def _input_names(self, topics) -> list:
        return ['/' + t for t in topics]

    def _subscribe(self, topics) -> None:
        pass

    # ------------------------------------------------------------------ driving
    def start(self) -> 'InProcessNode':
        """Configure (the model stage's thread builds the matcher) and activate, as the
        node."""
        self._configure()
        self._activate()
        return self

    def wait_taken(self, timeout: float = 10.0) -> None:
        """Wait until the model stage has taken every set given so far (or the node
        skipped or dropped it)."""
        deadline = time.monotonic() + timeout
        counts = self.diagnostics.counts
        while self.taken + counts.get('skipped', 0) + counts.get('dropped', 0) + \
                counts.get('ignored_inactive', 0) < self.synchronized:
            assert time.monotonic() < deadline, 'the model stage did not take the set'
            time.sleep(0.002)

    def close(self):
        self._cleanup()

    def build(self) -> 'InProcessNode':
        """Build the matcher and pipeline on this thread, without stage threads (synchronous
        use with :meth:`feed`)."""
        self._stages = Stages(self)
        self._stages.pipeline = self._build_pipeline()
        self._open_topics()
        self._activate()
        return self

    def feed(self, *msgs) -> None:
        """One synchronised set through the node's path, on this thread: callback, queue,
        the decode stage's step, queue, the model stage's step, the hand-over, the host
        stage's step."""
        self._on_synchronized(*msgs)
        stages = self._stages
        item = stages.inputs.get(timeout=0)
        assert item is not None
        self._decode_step(stages, item)
        item = stages.decoded.get(timeout=0)
        if item is None:                           # nobody listens: skipped
            return
        if stages.reset_requested.is_set():        # what the model stage's loop does
            stages.reset_requested.clear()
            stages.pipeline.reset()
        self._model_step(stages, item)
        if not stages.handoff.empty():
            self._host_step(stages, stages.handoff.get_nowait())

    def outputs(self, key: str):
        return self.pubs[key].messages

    def bad(self, code: str) -> int:
        return self.diagnostics.errors.get(code, 0)

    def log_count(self, needle: str) -> int:
        return sum(needle in t for _, t in self.logger.lines)
