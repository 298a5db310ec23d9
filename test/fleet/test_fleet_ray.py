"""romav2-batch on Ray: 2 CPU workers, outputs equal to romav2-replay, reruns, faults.

The acceptance run uses the installed script with its default (a local Ray instance); the
others join the session's Ray head (``--ray-address``, as on a cluster).
"""
import os
import re
import signal
import subprocess
import time

import pytest

from bag_compare import assert_same_bag
import fleet_helpers as helpers
import replay_doubles as doubles
from romav2_ros.fleet import cli
from romav2_ros.fleet.worker import CRASH_AFTER_ENV, CRASH_MARKER_ENV, PARTIAL_DIR

#: What a finished run leaves in --out besides the output bags.
RUN_FILES = {'manifest.json', 'summary.json', cli.LOCK_FILE}


def _on_head(head: str) -> list[str]:
    return ['--ray-address', head, '--node-ip-address', '127.0.0.1']


def _run(argv: list[str]) -> int:
    return cli.run_fleet(cli.parse_args(argv))


def test_four_bags_one_corrupt_rerun_and_changed_option(tmp_path, ray_env, ray_head):
    bags = helpers.make_fleet(tmp_path / 'in')
    good = [b.name for b in bags[:3]]
    out = tmp_path / 'out'
    argv = [str(tmp_path / 'in'), '--out', str(out), *helpers.ORACLE, '--workers', '2']
    proc = subprocess.run([str(helpers.BATCH), *argv], env=os.environ, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == cli.EXIT_SOME_FAILED == 3, proc.stderr
    rows = helpers.rows(out)
    assert {n: r['status'] for n, r in rows.items()} == {**{n: 'done' for n in good},
                                                         'bag_corrupt': 'failed'}
    assert 'File end magic is invalid' in rows['bag_corrupt']['reason']
    for bag in bags[:3]:
        expected = helpers.reference(bag, tmp_path / 'ref' / bag.name, helpers.ORACLE)
        assert assert_same_bag(out / bag.name, expected) > 0
    assert [rows[n]['frames'] for n in good] == [3, 5, 4] == [rows[n]['processed'] for n in good]
    assert set(os.listdir(out)) == RUN_FILES | set(good)      # no partial, no failed output
    run = helpers.summary(out)
    assert run['ray']['address'] == 'local' and run['ray']['workers'] == 2
    # Both actors were started; those whose model was ready before the work ran out are
    # listed (the oracle is fast: one may have done all four bags).
    assert 1 <= len(run['models']) <= 2
    assert all(m['torch_threads'] == 1 and m['device'] == 'cpu' for m in run['models'])
    assert run['totals']['done'] == 3 and run['totals']['failed'] == 1
    assert re.search(r'bags 4/4 \(1 failed\), frames 12/12, [\d.]+ frames/s', proc.stderr)
    assert re.search(r'bag_corrupt +failed +0 +0', proc.stderr)
    assert 'some inputs failed (exit status 3)' in proc.stderr

    # Rerun: nothing is recomputed (no Ray started, no file rewritten).
    before = {k: v for k, v in helpers.tree_state(out).items() if k != 'summary.json'}
    started = time.monotonic()
    assert _run([*argv, *_on_head(ray_head)]) == cli.EXIT_SOME_FAILED
    rerun_s = time.monotonic() - started
    after = {k: v for k, v in helpers.tree_state(out).items() if k != 'summary.json'}
    assert after == before
    assert {n: r['status'] for n, r in helpers.rows(out).items()} == {
        **{n: 'skipped' for n in good}, 'bag_corrupt': 'known-failed'}
    print(f'rerun with nothing to compute: {rerun_s:.2f} s')

    # One changed option: everything is recomputed, equal to romav2-replay with it.
    changed = ['-p', 'certainty_threshold:=0.95']   # above the oracle's 0.9: all masked
    assert _run([*argv, *changed, *_on_head(ray_head)]) == cli.EXIT_SOME_FAILED
    assert {n: r['status'] for n, r in helpers.rows(out).items()} == {
        **{n: 'done' for n in good}, 'bag_corrupt': 'failed'}
    for bag in bags[:3]:
        expected = helpers.reference(bag, tmp_path / 'ref2' / bag.name,
                                     [*helpers.ORACLE, *changed])
        assert_same_bag(out / bag.name, expected)
    assert set(os.listdir(out)) == RUN_FILES | set(good)
    assert helpers.summary(out)['ray']['address'] == ray_head


def test_worker_killed_mid_bag_is_retried_on_another(tmp_path, ray_env, ray_head, monkeypatch):
    doubles.write_stereo_bag(tmp_path / 'in' / 'long', pairs=8)
    marker = tmp_path / 'crashed'
    monkeypatch.setenv(CRASH_AFTER_ENV, '3')       # forwarded to the workers (ROMAV2_*)
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))
    out = tmp_path / 'out'
    status = _run([str(tmp_path / 'in'), '--out', str(out), *helpers.SLOW_ORACLE,
                   '--workers', '2', *_on_head(ray_head)])
    assert status == cli.EXIT_OK
    crashed_pid = int(marker.read_text())               # the first attempt did die
    row = helpers.rows(out)['long']
    assert row['status'] == 'done' and row['attempts'] == 2 and row['processed'] == 8
    assert [int(w.split(':')[1]) for w in row['workers']] != [crashed_pid]
    monkeypatch.delenv(CRASH_AFTER_ENV)
    expected = helpers.reference(tmp_path / 'in' / 'long', tmp_path / 'ref', helpers.SLOW_ORACLE)
    assert_same_bag(out / 'long', expected)
    assert set(os.listdir(out)) == RUN_FILES | {'long'}     # the dead attempt's partial is gone


def test_chunked_sequence_on_the_cluster_equals_the_replay(tmp_path, ray_env, ray_head):
    doubles.write_sequence_bag(tmp_path / 'in' / 'seq', frames=12)
    options = [*helpers.ORACLE, '--mode', 'sequential', '--outputs',
               'warp,certainty,covariance,warp_viz']
    out = tmp_path / 'out'
    assert _run([str(tmp_path / 'in'), '--out', str(out), *options, '--chunk-seconds', '0.35',
                 '--workers', '2', *_on_head(ray_head)]) == cli.EXIT_OK
    row = helpers.rows(out)['seq']
    assert (row['chunks'], row['frames'], row['processed']) == (4, 12, 11)
    expected = helpers.reference(tmp_path / 'in' / 'seq', tmp_path / 'ref', options)
    assert_same_bag(out / 'seq', expected)
    assert set(os.listdir(out)) == RUN_FILES | {'seq'}


def test_interrupted_run_keeps_finished_bags_and_resumes(tmp_path, ray_env, ray_head):
    for i in range(3):
        doubles.write_stereo_bag(tmp_path / 'in' / f'bag_{i}', pairs=4)
    out = tmp_path / 'out'
    argv = [str(helpers.BATCH), str(tmp_path / 'in'), '--out', str(out), *helpers.SLOW_ORACLE,
            '--workers', '1', *_on_head(ray_head)]
    proc = subprocess.Popen(argv, env=os.environ, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
            if re.match(r'romav2-batch: bags 1/3', line):
                proc.send_signal(signal.SIGINT)
                break
        err = proc.stderr.read()
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert status == cli.EXIT_INTERRUPTED, err
    assert 'interrupted (exit status 130)' in err
    rows = helpers.rows(out)
    done = sorted(n for n, r in rows.items() if r['status'] == 'done')
    assert len(done) == 1 and not (out / PARTIAL_DIR).exists()
    assert set(os.listdir(out)) == RUN_FILES | set(done)
    assert _run(argv[1:]) == cli.EXIT_OK
    statuses = {n: r['status'] for n, r in helpers.rows(out).items()}
    assert statuses == {n: 'skipped' if n in done else 'done' for n in rows}


@pytest.mark.parametrize('source', ['replay_doubles:no_such_factory'])
def test_a_matcher_that_cannot_be_built_ends_the_run(tmp_path, ray_env, ray_head, source):
    doubles.write_stereo_bag(tmp_path / 'in' / 'bag', pairs=1)
    out = tmp_path / 'out'
    assert _run([str(tmp_path / 'in'), '--out', str(out), '-p', f'model_source:={source}',
                 '--workers', '1', *_on_head(ray_head)]) == cli.EXIT_ERROR
    run = helpers.summary(out)
    assert 'no worker could build its model' in run['error'] and 'no_such_factory' in run['error']
    assert helpers.rows(out)['bag']['status'] == 'failed'
    assert not (out / 'bag').exists()
