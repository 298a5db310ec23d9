"""Two-process reliability tests of the installed romav2_node (real rclpy, private network
namespace): a mixed stream of bad and good inputs, faults, a camera_info that never comes,
shutdown time and leftovers, weights failures, and the startup order.

Run through scripts/run_tests.sh (the ``ros_env_guard`` fixture refuses anything else).
"""
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image

import fault_matchers as fm
from node_harness import NodeProcess, Tester
from romav2_ros.msg import SampledMatches

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures('ros_env_guard')]

HERE = Path(__file__).resolve().parent
STEREO = ('left/image_rect', 'left/camera_info', 'right/image_rect', 'right/camera_info')
SHUTDOWN_LIMIT_S = 2.0


@pytest.fixture
def tester(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [
        str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH')])))
    # the node imports fault_matchers (and matcher_doubles from test/)
    t = Tester()
    yield t
    t.close()


def stamp(k: int, sec: int = 100) -> Time:
    return Time(sec=sec + k // 10, nanosec=(k % 10) * 100_000_000)


def node_tree(node: NodeProcess) -> list:
    proc = psutil.Process(node.proc.pid)
    return [proc] + proc.children(recursive=True)


def shm_mapped(node: NodeProcess | None) -> set:
    """The Fast DDS shared-memory files the node's processes (None: this process) have
    mapped or open."""
    names = set()
    for p in node_tree(node) if node is not None else [psutil.Process()]:
        try:
            paths = [m.path for m in p.memory_maps(grouped=True)] + \
                [f.path for f in p.open_files()]
        except psutil.Error:
            continue
        names.update(os.path.basename(x) for x in paths if x.startswith('/dev/shm/'))
    return {n for n in names if 'fastrtps' in n or 'fastdds' in n}


def stop_timed(node: NodeProcess, sig) -> tuple[int, float, list]:
    """Signal the node; (exit status, seconds to exit, processes of its tree still alive)."""
    tree = node_tree(node)
    node.shm = shm_mapped(node)
    start = time.monotonic()
    node.proc.send_signal(sig)
    try:
        rc = node.proc.wait(10)
    except Exception:  # noqa: BLE001 - reported by the assertions
        rc = None
    elapsed = time.monotonic() - start
    alive = [p.pid for p in tree[1:] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    node.stop()
    return rc, elapsed, alive


def assert_shm_released(node: NodeProcess) -> None:
    """Every Fast DDS shared-memory file the exited node had mapped is gone, unless this test
    process still holds it: the tester's own segment (the node mapped it to read what the
    tester sent) and the listening-port files the tester sent to (Fast DDS removes a port file
    when its last user closes it). Other sessions' files are not looked at (/dev/shm is
    shared)."""
    assert node.shm, 'no Fast DDS shared memory seen in the node (profile not applied?)'
    left = {f for f in node.shm if os.path.exists(f'/dev/shm/{f}')}
    held_here = shm_mapped(None)
    assert left <= held_here, f'left in /dev/shm by the exited node: {sorted(left - held_here)}'


def output_topics(t: Tester) -> list:
    return [name for name, _ in t.node.get_topic_names_and_types()
            if name.startswith('/romav2_node/')]


def broken(k: int, how: str):
    s = stamp(k)
    left, li, right, ri = fm.stereo_set(k, s, mark={'oom': fm.MARK_OOM,
                                                    'error': fm.MARK_ERROR}.get(how, 0))
    if how == 'unsupported_encoding':
        left.encoding = 'nv21'
    elif how == 'zero_size':
        left.height = left.width = left.step = 0
        left.data = b''
    elif how == 'too_large':
        left.height, left.width, left.step = 50_000, 50_000, 150_000
    elif how == 'step_mismatch':
        right.data = bytes(right.data)[:-7]
    elif how == 'size_mismatch':
        small = fm.image(k, s, 'right_optical', h=fm.H // 2, w=fm.W // 2)
        right.height, right.width, right.step, right.data = small.height, small.width, \
            small.step, small.data
    elif how == 'nan_camera_info':
        ri.k = [float('inf')] + list(ri.k)[1:]
    elif how == 'nan_pixels':
        left, right = fm.float_image(k, s, 'left_optical'), fm.float_image(k + 1, s,
                                                                           'right_optical')
    return left, li, right, ri


def test_mixed_stream_counts_outputs_missing_info_and_sigterm(tester, tmp_path):
    node = NodeProcess({'mode': 'stereo', 'model_source': 'fault_matchers:shift',
                        'input_qos': 'reliable', 'output_qos_depth': 50},
                       tmp_path / 'node.log')
    try:
        qos = tester.reliable(50)
        pubs = [tester.publisher(Image if 'image' in tp else CameraInfo, '/' + tp, qos)
                for tp in STEREO]
        tester.record(Image, '/romav2_node/warp', 'warp')
        tester.record(SampledMatches, '/romav2_node/matches', 'matches')
        tester.record_diagnostics()
        tester.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60,
                          'the node')
        tester.wait_node_subscribers(['warp', 'matches'])

        cases = [(0, 'good'), (1, 'unsupported_encoding'), (2, 'good'), (3, 'zero_size'),
                 (4, 'too_large'), (5, 'step_mismatch'), (6, 'size_mismatch'),
                 (7, 'nan_camera_info'), (8, 'good'), (9, 'oom'), (10, 'good'), (11, 'error'),
                 (12, 'good'), (13, 'no_right_info'), (14, 'good'), (15, 'late_info'),
                 (15, 'good'),          # a duplicate stamp: late, dropped by the sync
                 (14, 'good'),          # out of order: late, dropped by the sync
                 (16, 'nan_pixels'), (17, 'good'), (-1, 'jump_back'), (-2, 'after_jump')]
        good = []
        for k, how in cases:
            if how == 'jump_back':     # a looped bag: 100 s back in time
                msgs, s = fm.stereo_set(90, stamp(0, sec=1)), stamp(0, sec=1)
            elif how == 'after_jump':
                msgs, s = fm.stereo_set(91, stamp(1, sec=1)), stamp(1, sec=1)
            else:
                msgs, s = broken(k, how), stamp(k)
            if how in ('good', 'late_info', 'nan_pixels', 'jump_back', 'after_jump') and \
                    s not in good:
                good.append(s)
            if how == 'late_info':
                for i in (0, 2):
                    pubs[i].publish(msgs[i])
                tester.spin_for(0.15)
                for i in (1, 3):
                    pubs[i].publish(msgs[i])
            else:
                for i, (pub, msg) in enumerate(zip(pubs, msgs)):
                    if not (how == 'no_right_info' and i == 3):
                        pub.publish(msg)
            tester.spin_for(0.25)
        try:
            tester.spin_until(lambda: len(tester.received['warp']) >= len(good), 20,
                              'the outputs of every good set')
        finally:
            tester.spin_for(1.5)     # one more diagnostics period
            got = [m.header.stamp for m in tester.received['warp']]
            assert got == good, (got, good, tester.diag_values(': input'),
                                 tester.diag_values(': processing'), node.output())
        assert [m.header.stamp for m in tester.received['matches']] == good
        inp, proc = tester.diag_values(': input'), tester.diag_values(': processing')
        # the jump back restarts the synchroniser; a stereo pair stands alone, so it is no
        # bad input (stamp_jump counts in the sequence modes)
        expected = {'unsupported_encoding': 1, 'zero_size': 1, 'too_large': 1,
                    'step_mismatch': 1, 'size_mismatch': 1, 'nan_camera_info': 1,
                    'late_input': 2, 'internal_error': 1}
        got = {k[len('bad_input.'):]: int(v) for k, v in inp.items()
               if k.startswith('bad_input.')}
        assert got == expected, inp
        assert inp['dropped'] == '0', inp
        assert proc['oom'] == '1' and proc['worker_errors'] == '1', proc
        assert int(proc['processed']) == len(good)
        log = node.output()
        for code in expected:
            assert log.count(f'bad input [{code}]') == (code != 'internal_error'), (code, log)
        assert log.count('CUDA out of memory, set dropped') == 1
        assert 'Traceback (most recent call last)' in log and '_broken_helper' in log

        # a camera_info that never arrives: images only, for longer than the warning delay
        deadline = time.monotonic() + 7.0
        k = 30
        while time.monotonic() < deadline:
            left, _, right, _ = fm.stereo_set(k, stamp(k))
            pubs[0].publish(left)
            pubs[2].publish(right)
            k += 1
            tester.spin_for(0.2)
        arr = tester.diag[-1]
        status = next(s for s in arr.status if s.name.endswith(': input'))
        assert status.level == status.WARN, status.message
        assert '/left/camera_info (nothing for' in status.message, status.message
        assert '/right/camera_info (nothing for' in status.message
        assert 'image_rect (' not in status.message
        assert node.proc.poll() is None
    finally:
        rc, elapsed, alive = stop_timed(node, signal.SIGTERM)
    print(f'\nSIGTERM shutdown (idle): {elapsed:.2f} s')
    assert rc == 0, node.output()
    assert elapsed < SHUTDOWN_LIMIT_S, f'shutdown took {elapsed:.2f} s'
    assert not alive
    assert_shm_released(node)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_signal_while_busy_under_load_shuts_down_quickly(tester, tmp_path, sig):
    """30 Hz input into a 0.3 s model; the signal lands while a pair is being matched. The
    exit still runs the atexit handlers (a plugin module's) and flushes the last log line."""
    probe = tmp_path / 'atexit.txt'
    node = NodeProcess({'mode': 'stereo', 'model_source': 'fault_matchers:slow_shift',
                        'input_qos': 'reliable'}, tmp_path / 'node.log',
                       env={'ROMAV2_MATCHER_PLUGINS': 'atexit_probe',
                            'ROMAV2_TEST_ATEXIT_FILE': str(probe)})
    try:
        qos = tester.reliable(10)
        pubs = [tester.publisher(Image if 'image' in tp else CameraInfo, '/' + tp, qos)
                for tp in STEREO]
        tester.record(Image, '/romav2_node/warp', 'warp')
        tester.record_diagnostics()
        tester.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60,
                          'the node')
        tester.wait_node_subscribers(['warp'])
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < 2.0 or not tester.received['warp']:
            for pub, msg in zip(pubs, fm.stereo_set(k, stamp(k))):
                pub.publish(msg)
            k += 1
            tester.spin_for(max(0.0, start + k / 30 - time.monotonic()))
            assert time.monotonic() - start < 30
        tester.spin_for(0.1)
    finally:
        rc, elapsed, alive = stop_timed(node, sig)
    print(f'\n{signal.Signals(sig).name} shutdown under load: {elapsed:.2f} s')
    assert rc == 0, node.output()
    assert elapsed < SHUTDOWN_LIMIT_S, f'shutdown took {elapsed:.2f} s'
    assert not alive
    assert_shm_released(node)
    assert probe.read_text() == 'atexit ran\n'
    assert 'shutting down' in node.output().splitlines()[-1]


def _weights_file(kind: str, path: Path) -> Path:
    if kind == 'missing':
        return path / 'nowhere' / 'romav2.0.1.pt'
    f = path / 'romav2.0.1.pt'
    if kind == 'truncated':
        torch.save({'weight': torch.zeros(64, 64)}, f)
        data = f.read_bytes()
        f.write_bytes(data[:len(data) // 2])
    else:  # another model's checkpoint: a readable state dict with the wrong keys
        torch.save({'fc.weight': torch.zeros(4, 4), 'fc.bias': torch.zeros(4)}, f)
    return f


@pytest.mark.parametrize('kind,expect', [
    ('missing', 'does not exist'),
    ('truncated', 'is not a readable PyTorch checkpoint'),
    ('wrong_keys', 'is not a RoMa v2 2.0.1 checkpoint'),
])
def test_bad_weights_end_the_startup_with_a_reason_and_nothing_advertised(tester, tmp_path,
                                                                           kind, expect):
    weights = _weights_file(kind, tmp_path)
    started = time.monotonic()
    node = NodeProcess({'model_source': 'pretrained', 'weights': str(weights),
                        'device': 'cpu'}, tmp_path / 'node.log')
    seen = set()
    try:
        while node.proc.poll() is None and time.monotonic() - started < 120:
            seen.update(output_topics(tester))
            tester.spin_for(0.2)
    finally:
        rc = node.stop()
    elapsed = time.monotonic() - started
    log = node.output()
    print(f'\n{kind} weights: exit {rc} after {elapsed:.1f} s')
    assert rc == 1, log
    assert expect in log and str(weights) in log, log
    assert 'weights:=' in log                      # says what to do
    assert 'ready:' not in log and not seen, seen  # never half-initialised
    if kind == 'missing':
        assert 'missing keys' not in log
    if kind == 'wrong_keys':
        assert 'missing keys' in log and "'fc.bias'" in log


def test_nothing_is_advertised_before_the_model_is_ready(tester, tmp_path):
    node = NodeProcess({'model_source': 'fault_matchers:slow_build'}, tmp_path / 'node.log')
    try:
        started = time.monotonic()
        early = set()
        while 'ready:' not in node.output():
            assert node.proc.poll() is None, node.output()
            assert time.monotonic() - started < 60, node.output()
            seen = set(output_topics(tester))
            if tester.node.count_publishers('/diagnostics') > 0:
                seen.add('/diagnostics')
            if tester.node.count_subscribers('/left/image_rect') > 0:
                seen.add('subscription /left/image_rect')
            if 'slow_build: matcher built' not in node.output():  # read after the graph
                early |= seen
            tester.spin_for(0.1)
        assert time.monotonic() - started > 3.5      # the build really took its 4 s
        assert not early, f'advertised before the model was ready: {early}'
        tester.spin_until(lambda: tester.node.count_publishers('/romav2_node/warp') > 0 and
                          tester.node.count_subscribers('/left/image_rect') > 0, 30,
                          'the topics once ready')
    finally:
        rc = node.stop()
    assert rc == 0, node.output()


def test_sigusr1_prints_every_threads_stack_and_the_node_goes_on(tester, tmp_path):
    """`kill -USR1` on a node that seems stuck: the Python stacks of all its threads (the two
    stage threads among them) in its log; it keeps running and still stops cleanly."""
    node = NodeProcess({'model_source': 'fault_matchers:shift'}, tmp_path / 'node.log')
    try:
        tester.spin_until(lambda: 'ready:' in node.output(), 60, 'the node ready')
        node.proc.send_signal(signal.SIGUSR1)
        tester.spin_until(lambda: '_host_stage' in node.output(), 10, 'the stacks in the log')
        log = node.output()
        assert 'Current thread' in log and '_model_stage' in log
        assert node.proc.poll() is None
    finally:
        rc = node.stop()
    assert rc == 0, node.output()
