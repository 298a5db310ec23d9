"""The node's two stage threads and their queues (``romav2_ros/node.py`` tells the whole
threading story): the latest-only input queue, the **model stage** (builds the pipeline, then
decodes, matches and starts each set's products on the device) and the **host stage** (poses,
messages, publishing), joined by a queue of :data:`HANDOFF_DEPTH` sets. The work of each step
is the node's (``MatchingNodeCore._model_step`` / ``_host_step``); this module only moves sets
between threads, in order, and stops them.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import romav2_ros.node
    from romav2_ros.pipeline import MatchingPipeline

#: Sets between the model stage and the host stage: one waiting while one is posted (more only
#: adds latency: the model stage never waits unless the host stage is the slower one).
HANDOFF_DEPTH = 1


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


class Stages:
    """One configuration's stage threads and queues (see the module docstring): the model
    stage builds the pipeline and feeds the host stage; neither is ever shared with another
    configuration, so a thread still finishing a model call after its cleanup cannot touch
    the next configuration's sets."""

    def __init__(self, core: 'romav2_ros.node.MatchingNodeCore'):
        self.core = core
        self.inputs = LatestQueue()
        self.handoff: queue.Queue = queue.Queue(HANDOFF_DEPTH)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.pipeline: MatchingPipeline | None = None
        self.reset_requested = threading.Event()
        self.threads = [threading.Thread(target=self._model_stage, name='romav2_model',
                                         daemon=True),
                        threading.Thread(target=self._host_stage, name='romav2_host',
                                         daemon=True)]

    def start(self, join_timeout: float) -> BaseException | None:
        """Start both threads and wait until the pipeline is built: None, or the error that
        stopped the build (the threads are then closed, waiting up to ``join_timeout`` s)."""
        for t in self.threads:
            t.start()
        self.ready.wait()
        if self.failure is not None:
            self.close(join_timeout)
        return self.failure

    def _model_stage(self) -> None:
        try:
            self.pipeline = self.core._build_pipeline()
        except BaseException as exc:  # noqa: BLE001 - reported by start() to the caller
            self.failure = exc
            self.stop.set()
            return
        finally:
            self.ready.set()
        generation = self.core._generation
        while not self.stop.is_set():
            if not self._room_for_next(timeout=0.1):
                continue
            item = self.inputs.get(timeout=0.1)
            if generation != self.core._generation or self.reset_requested.is_set():
                generation = self.core._generation   # re-activated, or a fault: start afresh
                self.reset_requested.clear()
                self.pipeline.reset()
            if item is not None:
                self.core._model_step(self, item)

    def _host_stage(self) -> None:
        # The host stage's tensor work (the products, when the device is the CPU) is a few
        # passes over an image each: one thread, not competing with the model stage's.
        torch.set_num_threads(1)
        while not (self.stop.is_set() and self.handoff.empty()):
            try:
                item = self.handoff.get(timeout=0.1)
            except queue.Empty:
                continue
            self.core._host_step(self, item)

    def _room_for_next(self, timeout: float) -> bool:
        """Wait until the host stage's queue has room. While the host stage is the slower
        one, the model stage takes its next set only then: the freshest set (the latest-only
        input queue keeps replacing it meanwhile), not one that would wait for the host behind
        a finished set (a host period less latency, the same rate)."""
        handoff = self.handoff
        with handoff.not_full:
            return handoff.not_full.wait_for(lambda: len(handoff.queue) < handoff.maxsize,
                                             timeout)

    def hand_over(self, item) -> bool:
        """Queue a set for the host stage, waiting while the queue is full; False when the
        stages stop meanwhile."""
        while not self.stop.is_set():
            try:
                self.handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self, timeout: float) -> bool:
        """Stop and join both threads; False when one is still busy after ``timeout`` s (it
        publishes nothing more and ends after its current call)."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t.is_alive():
                t.join(max(deadline - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in self.threads)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)
