"""The node's three stage threads and their queues (``romav2_ros/node.py`` tells the whole
threading story): the latest-only input queue, the **decode stage** (each set's frames and
parameter snapshot, while the model works on the set before), a latest-only queue of decoded
sets, the **model stage** (builds the pipeline, then matches and starts each set's products on
the device) and the **host stage** (poses, messages, publishing), joined by a queue of
:data:`HANDOFF_DEPTH` sets. The work of each step is the node's
(``MatchingNodeCore._decode_step`` / ``_model_step`` / ``_host_step``); this module only moves
sets between threads, in order, and stops them.

The decode and host stages run ``stage_nice`` nice levels below the model stage (Linux; a
thread may always lower its own priority): on a loaded machine the model stage, which feeds
the GPU and is the node's rate, gets a core as soon as its wait for the device ends, instead
of queueing behind the host stage's work for a scheduler slice.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING

import torch

from romav2_ros.pipeline import MatchingPipeline, own_torch_threads

if TYPE_CHECKING:
    import romav2_ros.node

#: Sets between the model stage and the host stage: one waiting while one is posted (more only
#: adds latency: the model stage never waits unless the host stage is the slower one).
HANDOFF_DEPTH = 1
#: The process's torch intra-op threads, read when the node is imported: the model stage's
#: (the host stage runs one; see :func:`own_torch_threads`).
MODEL_THREADS = torch.get_num_threads()


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
    stage builds the pipeline, takes the decode stage's sets and feeds the host stage; none
    is ever shared with another configuration, so a thread still finishing a model call
    after its cleanup cannot touch the next configuration's sets."""

    def __init__(self, core: 'romav2_ros.node.MatchingNodeCore'):
        self.core = core
        self.inputs = LatestQueue()
        self.decoded = LatestQueue()
        self.handoff: queue.Queue = queue.Queue(HANDOFF_DEPTH)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.pipeline: MatchingPipeline | None = None
        self.reset_requested = threading.Event()
        self.threads = [threading.Thread(target=target, name=name, daemon=True)
                        for target, name in ((self._decode_stage, 'romav2_decode'),
                                             (self._model_stage, 'romav2_model'),
                                             (self._host_stage, 'romav2_host'))]

    def start(self, join_timeout: float) -> BaseException | None:
        """Start the threads and wait until the pipeline is built: None, or the error that
        stopped the build (the threads are then closed, waiting up to ``join_timeout`` s)."""
        for t in self.threads:
            t.start()
        self.ready.wait()
        if self.failure is not None:
            self.close(join_timeout)
        return self.failure

    def _decode_stage(self) -> None:
        lower_priority(self.core.values['stage_nice'])
        self.ready.wait()
        while not self.stop.is_set():
            item = self.inputs.get(timeout=0.1)
            if item is not None:
                self.core._decode_step(self, item)

    def _model_stage(self) -> None:
        own_torch_threads(MODEL_THREADS)
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
            item = self.decoded.get(timeout=0.1)
            if generation != self.core._generation or self.reset_requested.is_set():
                generation = self.core._generation   # re-activated, or a fault: start afresh
                self.reset_requested.clear()
                self.pipeline.reset()
            if item is not None:
                self.core._model_step(self, item)

    def _host_stage(self) -> None:
        # The host stage's tensor work (the products, when the device is the CPU) is a few
        # passes over an image each: one thread, not competing with the model stage's.
        own_torch_threads(1)
        lower_priority(self.core.values['stage_nice'])
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
        """Stop and join the threads; False when one is still busy after ``timeout`` s (it
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


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux, where it is per thread; on
    other systems the threads keep the process's priority)."""
    if nice and sys.platform.startswith('linux'):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
