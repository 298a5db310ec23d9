"""The node's stage threads, in-process (no DDS): the decode stage decodes set n+1 while the
model works on set n, the model stage works on set n+1 while the host stage posts set n, the
order is kept, every set that went through the model is delivered, and while the host stage is
the slower one the model takes the freshest set."""
import os
import sys
import threading
import time

import pytest
import torch
from builtin_interfaces.msg import Time

import fault_matchers as fm
from inprocess_node import InProcessNode
from romav2_ros.pipeline import MatchingPipeline

MODEL_S = 0.1          # fault_matchers:timed_shift
HOST_S = 0.1


def t(k: int) -> Time:
    return Time(sec=100 + k // 10, nanosec=(k % 10) * 100_000_000)


def key(stamp: Time) -> int:
    return (stamp.sec - 100) * 10 + stamp.nanosec // 100_000_000


def feed_in_turn(node: InProcessNode, n: int) -> None:
    """Sets 0..n-1, each given when the model stage took the one before; returns once n
    warp outputs came (or after 10 s)."""
    for k in range(n):
        node._on_synchronized(*fm.stereo_set(k, t(k)))
        node.wait_taken()
    deadline = time.monotonic() + 10
    while len(node.outputs('warp')) < n and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture
def recorded(monkeypatch):
    """Intervals (stamp key, start, end) of the model stage's ``infer`` and the host stage's
    ``finish``, the host's queue length when each ``infer`` began; ``finish`` takes
    ``host_s`` s more than it does (a slow host stage)."""
    log = {'infer': [], 'finish': [], 'handoff_at_infer': [], 'host_s': HOST_S}
    infer, finish = MatchingPipeline.infer, MatchingPipeline.finish
    node_box = {}

    def timed_infer(self, sets, wanted):
        log['handoff_at_infer'].append(node_box['node']._stages.handoff.qsize())
        start = time.monotonic()
        out = infer(self, sets, wanted)
        log['infer'].append((key(sets[0].frames[0].header.stamp), start, time.monotonic()))
        return out

    def slow_finish(self, item):
        start = time.monotonic()
        time.sleep(log['host_s'])
        out = finish(self, item)
        log['finish'].append((None, start, time.monotonic()))
        return out
    monkeypatch.setattr(MatchingPipeline, 'infer', timed_infer)
    monkeypatch.setattr(MatchingPipeline, 'finish', slow_finish)
    log['node_box'] = node_box
    return log


def test_the_model_stage_runs_set_n_plus_1_while_the_host_stage_posts_set_n(recorded):
    """8 sets, each given when the model stage took the previous one: a model call overlaps
    a host call (0.1 s each: 8 sets take about 0.9 s, not the 1.6 s of one thread), the
    outputs keep the input order and every set that went through the model is delivered."""
    node = InProcessNode('stereo', model_source='fault_matchers:timed_shift').start()
    recorded['node_box']['node'] = node
    try:
        started = time.monotonic()
        feed_in_turn(node, 8)
        elapsed = time.monotonic() - started
        stamps = [key(m.header.stamp) for m in node.outputs('warp')]
        assert stamps == list(range(8))
        assert node.diagnostics.counts['model_sets'] == 8
        assert node.diagnostics.counts.get('dropped', 0) == 0
        overlaps = [(a, b) for a in recorded['infer'] for b in recorded['finish']
                    if a[1] < b[2] and b[1] < a[2]]
        assert overlaps, 'no model call ran while the host stage worked'
        # one thread would need 8 x (0.1 + 0.1) s; the slack covers a loaded CI machine
        assert elapsed < 8 * (MODEL_S + HOST_S) - 0.3, f'{elapsed:.2f} s for 8 sets'
    finally:
        node.close()


def test_the_decode_stage_decodes_set_n_plus_1_while_the_model_matches_set_n(recorded,
                                                                           monkeypatch):
    """Decoding takes 50 ms, the model 0.1 s, the host 0.1 s; a set is given whenever the
    model starts the previous one: each set after the first is decoded on the decode stage's
    thread while the model matches the set before (so the model's period is not the sum),
    and every set is delivered in order."""
    decoded = []
    decode = MatchingPipeline.decode

    def slow_decode(self, msgs):
        start = time.monotonic()
        time.sleep(0.05)
        out = decode(self, msgs)
        decoded.append((key(msgs[0].header.stamp), start, time.monotonic(),
                        threading.current_thread().name))
        return out
    monkeypatch.setattr(MatchingPipeline, 'decode', slow_decode)
    node = InProcessNode('stereo', model_source='fault_matchers:timed_shift').start()
    recorded['node_box']['node'] = node
    try:
        feed_in_turn(node, 5)
        assert [key(m.header.stamp) for m in node.outputs('warp')] == list(range(5))
        assert {name for *_, name in decoded} == {'romav2_decode'}
        infer = {k: (start, end) for k, start, end in recorded['infer']}
        for k, start, end, _ in decoded[1:]:
            model_start, model_end = infer[k - 1]
            assert model_start <= start and end <= model_end, \
                f'set {k} was decoded at {start:.3f}-{end:.3f}, outside the model call of ' \
                f'set {k - 1} ({model_start:.3f}-{model_end:.3f})'
    finally:
        node.close()


def test_while_the_host_stage_is_slower_the_model_takes_the_freshest_set(recorded):
    """Sets arrive every 10 ms, the model takes 0.1 s and the host 0.3 s: the model stage
    starts a set only when the host's queue has room (never with a finished set waiting
    there), so each set is at most one host period old when the model takes it; every set
    through the model is delivered, in order."""
    recorded['host_s'] = 0.3
    node = InProcessNode('stereo', model_source='fault_matchers:timed_shift').start()
    recorded['node_box']['node'] = node
    fed = {}
    stop = threading.Event()

    def feeder():
        k = 0
        while not stop.is_set():
            fed[k] = time.monotonic()
            node._on_synchronized(*fm.stereo_set(k, t(k)))
            k += 1
            time.sleep(0.01)
    thread = threading.Thread(target=feeder)
    thread.start()
    try:
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join()
    try:
        deadline = time.monotonic() + 10
        while (len(node.outputs('warp')) < node.diagnostics.counts['model_sets']
               or node._stages.handoff.qsize()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(recorded['infer']) >= 4
        assert set(recorded['handoff_at_infer']) == {0}
        # taken within a host period (+ the model call and scheduling) of its arrival
        ages = [start - fed[k] for k, start, _ in recorded['infer']]
        assert max(ages) < 0.3 + MODEL_S + 0.15, f'a set waited {max(ages):.2f} s'
        stamps = [key(m.header.stamp) for m in node.outputs('warp')]
        assert stamps == sorted(stamps) and len(stamps) == node.diagnostics.counts['model_sets']
        assert node.diagnostics.counts['dropped'] > 0     # dropped before the model only
    finally:
        node.close()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='per-thread nice is Linux\'s')
@pytest.mark.parametrize('nice', [None, 0, 3])
def test_the_decode_and_host_stages_run_stage_nice_levels_below_the_model_stage(nice):
    """``stage_nice`` (default 5): the decode and host stage threads' nice value is the
    process's plus it, the model stage's the process's."""
    overrides = {} if nice is None else {'stage_nice': nice}
    node = InProcessNode('stereo', **overrides).start()
    try:
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        step = 5 if nice is None else nice
        expected = {'romav2_decode': base + step, 'romav2_model': base,
                    'romav2_host': base + step}
        deadline = time.monotonic() + 5      # each thread sets its own as it starts
        while True:
            got = {th.name: os.getpriority(os.PRIO_PROCESS, th.native_id)
                   for th in node._stages.threads}
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert got == expected
    finally:
        node.close()


def test_the_model_stage_keeps_the_process_torch_threads_while_the_host_stage_runs_one(
        monkeypatch):
    """The host stage runs one torch thread; ``torch.set_num_threads`` also sets what a thread
    takes at its first parallel op, so the model stage must set its own back (before: a model
    on the CPU ran on one thread). Read where each stage does its work, with the process's
    count set to 2 first (a 1-core machine would not tell them apart); the model stage's
    decision after the match runs one (its small ops' parallel regions only wait for cores)."""
    torch.set_num_threads(2)
    seen = {'infer': set(), 'after_match': set(), 'finish': set()}
    infer, finish = MatchingPipeline.infer, MatchingPipeline.finish

    def recording_infer(self, sets, wanted):
        seen['infer'].add(torch.get_num_threads())
        after_match = self.mode.after_match

        def recording_after_match(*args):
            seen['after_match'].add(torch.get_num_threads())
            return after_match(*args)
        self.mode.after_match = recording_after_match
        try:
            return infer(self, sets, wanted)
        finally:
            del self.mode.after_match

    def recording_finish(self, item):
        seen['finish'].add(torch.get_num_threads())
        return finish(self, item)
    monkeypatch.setattr(MatchingPipeline, 'infer', recording_infer)
    monkeypatch.setattr(MatchingPipeline, 'finish', recording_finish)
    monkeypatch.setattr('romav2_ros.stages.MODEL_THREADS', 2)
    node = InProcessNode('stereo').start()
    try:
        feed_in_turn(node, 3)
        assert len(node.outputs('warp')) == 3
    finally:
        node.close()
    # the decision after the match (small ops) on one thread too: MatchingPipeline._launch
    assert seen == {'infer': {2}, 'after_match': {1}, 'finish': {1}}
