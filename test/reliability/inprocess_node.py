"""The node's worker logic without rclpy or DDS: :class:`RoMaV2Node`'s own methods on a
stand-in object with recording publishers and logger.

``_on_synchronized``, ``_work``, ``_process``, ``_fault``, ``_report`` and ``_log_limited``
are the node's functions, unchanged; only what needs an rclpy context (publishers, the logger,
``/diagnostics`` publishing, subscriber counts) is replaced.
"""
from __future__ import annotations

import threading
import time

from romav2_ros import params
from romav2_ros.diagnostics import Diagnostics
from romav2_ros.node import INPUT_TOPICS, LatestQueue, RoMaV2Node, StartupError, _explain
from romav2_ros.pipeline import OUTPUTS


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


class InProcessNode:
    """RoMaV2Node's worker, queue and accounting; ``wanted``: the outputs "subscribed"."""

    _on_synchronized = RoMaV2Node._on_synchronized
    _build = RoMaV2Node._build
    _work = RoMaV2Node._work
    _handle = RoMaV2Node._handle
    _process = RoMaV2Node._process
    _fault = RoMaV2Node._fault
    _report = RoMaV2Node._report
    _log_limited = RoMaV2Node._log_limited

    def __init__(self, mode: str = 'stereo', model_source: str = 'fault_matchers:shift',
                 wanted=('warp', 'certainty', 'matches'), device: str = 'cpu', **overrides):
        self.values = {p.name: p.default for p in params.PARAMS}
        self.values.update(mode=mode, model_source=model_source, warmup=False, device='cpu',
                           **overrides)
        self.mode = mode
        self.device = device
        self.pipeline = None
        self.queue = LatestQueue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure = None
        self._last_log = {}
        self._last_viz = 0.0
        self.logger = RecordingLogger()
        self.pubs = {k: RecordingPublisher() for k in OUTPUTS
                     if k != 'disparity' or mode == 'stereo'}
        topics = ['/' + t for t in INPUT_TOPICS[mode]]
        self.diagnostics = Diagnostics(None, ' and '.join(topics), device, inputs=topics)
        self.wanted = set(wanted)
        self._worker = threading.Thread(target=self._work, name='romav2_worker', daemon=True)

    def get_logger(self):
        return self.logger

    def _wanted(self):
        return set(self.wanted)

    # ------------------------------------------------------------------ driving
    def start(self) -> 'InProcessNode':
        self._worker.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise StartupError(_explain(self._failure, self.values)) from self._failure
        return self

    def wait_taken(self, timeout: float = 10.0) -> None:
        """Wait until the worker thread has taken the queued set."""
        deadline = time.monotonic() + timeout
        while len(self.queue):
            assert time.monotonic() < deadline, 'the worker did not take the set'
            time.sleep(0.002)

    def close(self):
        self._stop.set()
        self._worker.join(10)

    def build(self) -> 'InProcessNode':
        """Build the matcher and pipeline on this thread (synchronous use with :meth:`feed`)."""
        self._build()
        return self

    def feed(self, *msgs) -> None:
        """One synchronised set through the node's path: callback, queue, worker step."""
        self._on_synchronized(*msgs)
        item = self.queue.get(timeout=0)
        assert item is not None
        self._handle(item)

    def outputs(self, key: str):
        return self.pubs[key].messages

    def bad(self, code: str) -> int:
        return self.diagnostics.errors.get(code, 0)

    def log_count(self, needle: str) -> int:
        return sum(needle in t for _, t in self.logger.lines)
