"""Faults inside the worker, in-process (no DDS): CUDA out-of-memory, unexpected exceptions
in the matcher or while publishing. The pair is lost and counted; the node goes on."""
import threading
import time
import weakref

import pytest
import torch
from builtin_interfaces.msg import Time

import fault_matchers as fm
from inprocess_node import InProcessNode
from romav2_ros import node as node_module
from romav2_ros import params
from romav2_ros.pipeline import MatchingPipeline


def t(k: int) -> Time:
    return Time(sec=100 + k // 10, nanosec=(k % 10) * 100_000_000)


def test_cuda_oom_drops_the_pair_empties_the_cache_and_recovers(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: emptied.append(1))
    node = InProcessNode('stereo', device='cuda').build()   # the matcher itself is on the CPU
    node.diagnostics._gpu = lambda: {}
    marks = [0, fm.MARK_OOM, 0, fm.MARK_OOM, fm.MARK_OOM, 0]
    for k, mark in enumerate(marks):
        node.feed(*fm.stereo_set(k, t(k), mark=mark))
    assert [m.header.stamp for m in node.outputs('warp')] == [t(0), t(2), t(5)]
    assert node.diagnostics.counts['oom'] == 3 and len(emptied) == 3
    assert node.log_count('CUDA out of memory') == 1      # logged once, then rate-limited
    assert not node.diagnostics.errors                     # not a bad input
    proc = node.diagnostics.statuses()[1]
    values = {kv.key: kv.value for kv in proc.values}
    assert values['oom'] == '3' and values['processed'] == '3'
    assert proc.level == proc.WARN and 'oom 3' in proc.message
    assert node.diagnostics.statuses()[1].level == proc.OK   # a quiet period clears it


def test_cuda_oom_on_cpu_device_does_not_touch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: pytest.fail('CUDA touched'))
    node = InProcessNode('stereo').build()
    node.feed(*fm.stereo_set(0, t(0), mark=fm.MARK_OOM))
    node.feed(*fm.stereo_set(1, t(1)))
    assert node.diagnostics.counts['oom'] == 1 and len(node.outputs('warp')) == 1


def test_sequential_restarts_after_a_fault():
    node = InProcessNode('sequential', wanted=('warp', 'matches')).build()
    info = fm.camera_info('cam', t(0))
    for k, mark in enumerate([0, 0, fm.MARK_OOM, 0, 0, fm.MARK_ERROR, 0, 0]):
        node.feed(fm.image(k, t(k), 'cam', mark=mark), info)
    # pairs: 1-0; frame 2 fails -> 3 starts a new sequence; 4-3; 5 fails; 7-6
    assert [m.header.stamp for m in node.outputs('warp')] == [t(1), t(4), t(7)]
    assert [m.stamp_b for m in node.outputs('matches')] == [t(0), t(3), t(6)]


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.005)


def test_worker_thread_survives_exceptions_and_logs_the_traceback():
    node = InProcessNode('stereo').start()
    try:
        sent = 0
        for k, mark in enumerate([0, fm.MARK_ERROR, 0, fm.MARK_ERROR, 0]):
            node._on_synchronized(*fm.stereo_set(k, t(k), mark=mark))
            sent += 1
            wait(lambda: node.diagnostics.counts['processed'] +
                 node.diagnostics.counts['worker_errors'] == sent)
        assert node._stages.alive
        assert node.diagnostics.counts['worker_errors'] == 2
        assert node.diagnostics.errors['internal_error'] == 2       # the documented key
        assert [m.header.stamp for m in node.outputs('warp')] == [t(0), t(2), t(4)]
        errors = [text for level, text in node.logger.lines if level == 'error']
        assert len(errors) == 1, errors                             # once, then rate-limited
        assert 'Traceback (most recent call last)' in errors[0]
        assert 'ZeroDivisionError' in errors[0] and '_broken_helper' in errors[0]
        assert 'node continues' in errors[0]
    finally:
        node.close()


def test_an_exception_while_publishing_is_survived_too():
    node = InProcessNode('stereo').build()
    pub = node.pubs['certainty']
    calls = []

    def flaky(msg):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('publisher failed (simulated)')
        pub.messages.append(msg)
    pub.publish = flaky
    for k in range(3):
        node.feed(*fm.stereo_set(k, t(k)))
    assert node.diagnostics.counts['worker_errors'] == 1
    assert len(node.outputs('certainty')) == 2
    assert 'publisher failed' in node.logger.text()


def test_close_while_the_model_is_busy_is_prompt():
    node = InProcessNode('stereo', model_source='fault_matchers:slow_shift').start()
    node._on_synchronized(*fm.stereo_set(0, t(0)))
    node.wait_taken()
    time.sleep(0.05)                      # inside the 0.3 s match
    stages = node._stages
    start = time.monotonic()
    node.close()
    elapsed = time.monotonic() - start
    assert not stages.alive
    assert elapsed < 0.5, f'close took {elapsed:.2f} s'


class _OomHoldingMatcher(fm.ShiftMatcher):
    """Raises CUDA out of memory while a large tensor of the failed set is alive in its own
    frame (as a real model's activations are when the allocator gives up)."""

    def __init__(self):
        super().__init__()
        self.held = []

    def match_features(self, fa, fb):
        activations = torch.empty(1 << 20)
        self.held.append(weakref.ref(activations))
        raise torch.cuda.OutOfMemoryError('CUDA out of memory (simulated, tensors held)')


def test_cuda_oom_lets_go_of_the_failed_sets_tensors_before_emptying_the_cache(monkeypatch):
    """Emptying the cache while the failed set's tensors are still referenced (by the
    exception's frames, the kept frames) would free nothing."""
    matcher = _OomHoldingMatcher()
    node = InProcessNode('stereo', device='cuda').build()
    node._stages.pipeline.matcher = matcher
    node.diagnostics._gpu = lambda: {}
    alive_at_empty = []
    monkeypatch.setattr(torch.cuda, 'empty_cache',
                        lambda: alive_at_empty.append(matcher.held[-1]() is not None))
    node.feed(*fm.stereo_set(0, t(0)))
    assert node.diagnostics.counts['oom'] == 1
    assert alive_at_empty == [False]


class _ThreadRecordingMatcher(fm.ShiftMatcher):
    """A slow matcher that records the thread of every match."""

    def __init__(self, delay):
        super().__init__(delay=delay)
        self.threads = []

    def match_features(self, fa, fb):
        self.threads.append(threading.current_thread())
        return super().match_features(fa, fb)


def test_a_cleanup_that_cannot_wait_leaves_nothing_shared_with_the_next_configure(monkeypatch):
    """A cleanup that gives up waiting for a busy model stage, then a configure: the old
    thread ends after its call and never takes the new configuration's sets (before: the two
    workers shared one queue and one pipeline)."""
    monkeypatch.setattr(node_module, 'JOIN_TIMEOUT_S', 0.05)
    matcher = _ThreadRecordingMatcher(delay=0.5)
    monkeypatch.setattr(InProcessNode, '_build_pipeline', lambda self: MatchingPipeline(
        matcher, params.pipeline_config(self.values)))
    node = InProcessNode('stereo').start()
    try:
        old = node._stages
        node._on_synchronized(*fm.stereo_set(0, t(0)))
        node.wait_taken()
        time.sleep(0.05)                                  # inside the 0.5 s match
        node.close()                                      # gives up after 0.05 s
        assert old.alive
        node._configure()
        node._activate()
        new = node._stages
        assert new.inputs is not old.inputs and new.decoded is not old.decoded and \
            new.handoff is not old.handoff
        for k in range(1, 4):
            node._on_synchronized(*fm.stereo_set(k, t(k)))
            wait(lambda: node.diagnostics.counts['processed'] == k, timeout=20)
        wait(lambda: not old.alive)
        new_model = next(th for th in new.threads if th.name == 'romav2_model')
        assert matcher.threads[1:] == [new_model] * 3
        assert [m.header.stamp for m in node.outputs('warp')] == [t(1), t(2), t(3)]
    finally:
        node.close()
