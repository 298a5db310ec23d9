"""romav2-batch's parts without Ray: inputs, fingerprints, manifest, options, chunks, report.

The chunk tests run :class:`BagWorker` in this process over every window of a bag and merge
the parts, as the Ray actors do, and compare with ``romav2-replay`` of the whole bag.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bag_compare import assert_same_bag
import fleet_helpers as helpers
import replay_doubles as doubles
from romav2_ros import replay
from romav2_ros.fleet import chunks, cli, inputs, manifest, report
from romav2_ros.fleet.worker import PARTIAL_DIR, BagWorker, Job

RNG_FREE = 'warp,certainty,covariance,disparity,warp_viz,covariance_viz'
#: With the sampled outputs: the sampler is seeded per pair, so chunks draw what the whole bag
#: draws.
CHUNKED = RNG_FREE + ',matches,relative_pose,relative_pose_info'


# --- inputs --------------------------------------------------------------------------------

def test_find_bags_names_globs_and_the_output_folder(tmp_path):
    for robot in ('robot1', 'robot2'):
        doubles.write_stereo_bag(tmp_path / 'fleet' / robot / 'run_01', pairs=1)
    doubles.write_stereo_bag(tmp_path / 'single', pairs=1)
    (tmp_path / 'not_a_bag.txt').write_text('x')
    out = tmp_path / 'fleet' / 'out'
    doubles.write_stereo_bag(out / 'old_output', pairs=1)  # a previous run's output: no input
    found = inputs.find_bags([str(tmp_path / 'fleet'), str(tmp_path / 's*'),
                              str(tmp_path / 'single'), str(tmp_path / 'not_a_bag.txt')], out)
    assert [(b.name, b.path) for b in found] == [
        ('robot1/run_01', tmp_path / 'fleet' / 'robot1' / 'run_01'),
        ('robot2/run_01', tmp_path / 'fleet' / 'robot2' / 'run_01'),
        ('single', tmp_path / 'single'),                      # once, though named twice
        ('not_a_bag.txt', tmp_path / 'not_a_bag.txt')]        # the worker will say why


@pytest.mark.parametrize('inputs_of, message', [
    (lambda t: [str(t / 'nothing*')], 'no such file'),
    (lambda t: [str(t / 'missing')], 'no such file'),
    (lambda t: [str(t / 'empty')], 'no rosbag2 folder'),
    (lambda t: [str(t / 'a' / 'run'), str(t / 'b' / 'run')], 'written twice'),
])
def test_find_bags_refuses_bad_inputs(tmp_path, inputs_of, message):
    (tmp_path / 'empty').mkdir()
    for side in 'ab':
        doubles.write_stereo_bag(tmp_path / side / 'run', pairs=1)
    with pytest.raises(inputs.InputsError, match=message):
        inputs.find_bags(inputs_of(tmp_path), tmp_path / 'out')


def test_fingerprint_follows_content_size_and_mtime(tmp_path):
    bag = tmp_path / 'bag'
    doubles.write_stereo_bag(bag, pairs=40)     # storage larger than the two 64 KiB ends
    storage = bag / 'bag.mcap'
    assert storage.stat().st_size > 2 * inputs.EDGE_BYTES
    first = inputs.fingerprint(bag)
    assert inputs.fingerprint(bag) == first
    data = bytearray(storage.read_bytes())
    data[-100] ^= 0xFF                          # the MCAP summary at the end
    storage.write_bytes(bytes(data))
    os.utime(storage, ns=(first['mtime_ns'], first['mtime_ns']))
    changed = inputs.fingerprint(bag)
    assert changed['sha256'] != first['sha256'] and changed['size'] == first['size']
    os.utime(storage, ns=(first['mtime_ns'] + 10**9,) * 2)
    assert inputs.fingerprint(bag)['mtime_ns'] == first['mtime_ns'] + 10**9


def test_metadata_gives_the_replays_frame_count(tmp_path):
    doubles.write_stereo_bag(tmp_path / 'bag', pairs=3, extra_left=2)
    meta = inputs.BagMetadata.read(tmp_path / 'bag')
    assert meta.expected_sets('stereo', None, 'raw') == 3    # min over the four topics
    assert meta.expected_sets('sequential', None, 'raw') is None   # two cameras: ambiguous
    (tmp_path / 'bag' / 'metadata.yaml').write_text('rosbag2_bagfile_information: [')
    assert inputs.BagMetadata.read(tmp_path / 'bag') is None


# --- options and manifest -----------------------------------------------------------------

def _options(argv):
    return manifest.output_options(cli.parse_args(argv), exclude=cli.build_parser().fleet_dests)


def test_output_options_ignore_how_the_run_is_executed():
    base = _options(['in', '--out', 'o', *helpers.ORACLE])
    same = _options(['other_in', '--out', 'o2', *helpers.ORACLE, '--workers', '4',
                     '--gpus-per-worker', '0.5', '--ray-address', 'h:1', '--retries', '0',
                     '--cpus-per-worker', '2', '--device', 'cpu', '-p', 'warmup:=false',
                     '--chunk-seconds', '30', '--outputs', RNG_FREE])
    assert {k: v for k, v in same.items() if k != 'outputs'} == \
        {k: v for k, v in base.items() if k != 'outputs'}
    for change in (['-p', 'certainty_threshold:=0.2'], ['--mode', 'sequential'],
                   ['--storage', 'sqlite3'], ['--include-inputs'], ['--random-weights', '3'],
                   ['--setting', 'turbo']):
        assert _options(['in', '--out', 'o', *helpers.ORACLE, *change]) != base, change
    assert base['tool'].startswith('romav2_ros ')


def test_manifest_skips_only_unchanged_finished_bags(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    doubles.write_stereo_bag(tmp_path / 'bag', pairs=1)
    bag = inputs.BagInput(tmp_path / 'bag', 'bag')
    fp, opts = inputs.fingerprint(bag.path), {'params': {'a': 1}}
    book = manifest.Manifest(out)
    book.record(bag, fp, opts, 'done', frames=1)
    assert manifest.Manifest(out).previous(bag, out, fp, opts) is None   # no output folder
    doubles.write_stereo_bag(out / 'bag', pairs=1)
    book = manifest.Manifest(out)
    assert book.previous(bag, out, fp, opts)['frames'] == 1
    assert book.previous(bag, out, {**fp, 'size': 1}, opts) is None
    assert book.previous(bag, out, fp, {'params': {'a': 2}}) is None
    assert book.previous(inputs.BagInput(bag.path, 'renamed'), out, fp, opts) is None
    book.record(bag, fp, opts, 'failed', reason='bad')
    assert manifest.Manifest(out).previous(bag, out, fp, opts)['reason'] == 'bad'
    (out / manifest.FILE).write_text('{broken')
    assert manifest.Manifest(out).unreadable and not manifest.Manifest(out).entries


# --- command line ---------------------------------------------------------------------------

@pytest.mark.parametrize('argv, message', [
    (['--batch-size', '0'], '--batch must be in'),
    (['--mode', 'stereo_odometry', '--trajectory', 'odometry.txt'], 'romav2-replay'),
    (['--chunk-seconds', '10', '--mode', 'stereo_odometry'], 'mode stereo_odometry keeps state'),
    (['--chunk-seconds', '10', '--outputs', 'warp', '--limit', '3'], '--limit'),
    (['--workers', '0'], '--workers'),
    (['--node-ip-address', '127.0.0.1'], 'for --ray-address'),
    (['-p', 'certainty_threshold:=2'], 'certainty_threshold'),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(['in', '--out', 'o', *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_inputs_that_resolve_to_nothing_exit_2(tmp_path, capsys):
    args = cli.parse_args([str(tmp_path / 'none*'), '--out', str(tmp_path / 'out')])
    assert cli.run_fleet(args) == cli.EXIT_USAGE
    assert 'no such file' in capsys.readouterr().err


def test_one_run_at_a_time_per_output_folder(tmp_path):
    doubles.write_stereo_bag(tmp_path / 'in' / 'bag', pairs=1)
    (tmp_path / 'out').mkdir()
    args = cli.parse_args([str(tmp_path / 'in'), '--out', str(tmp_path / 'out'), *helpers.ORACLE])
    with cli._Lock(tmp_path / 'out' / cli.LOCK_FILE):          # another run holds it
        with pytest.raises(cli.FleetError, match='another romav2-batch is writing'):
            cli.run_fleet(args)


def test_relative_weights_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.parse_args(['in', '--out', 'o', '--weights', 'models/romav2.pt'])
    assert args.values['weights'] == str(tmp_path / 'models' / 'romav2.pt')


def test_replay_options_and_inputs_may_be_interleaved():
    args = cli.parse_args(['--mode', 'sequential', 'a', '--out', 'o', 'b', '-p',
                           'num_samples:=50', 'c', '--workers', '2'])
    assert args.inputs == ['a', 'b', 'c'] and args.mode == 'sequential'
    assert args.values['num_samples'] == 50 and args.workers == 2 and args.batch == 1


# --- chunks --------------------------------------------------------------------------------

def test_plan_splits_long_bags_with_a_lead_in():
    meta = inputs.BagMetadata(start_ns=1000, duration_ns=int(2.5e9), topics=[])
    values = {'max_stamp_jump': 2.0, 'sync_slop': 0.01}
    assert chunks.plan(meta, 0, values) == [None]
    assert chunks.plan(meta, 3.0, values) == [None]
    assert chunks.plan(None, 1.0, values) == [None]
    windows = chunks.plan(meta, 1.0, values)
    assert [(w.start_ns, w.stop_ns) for w in windows] == [
        (None, 1000 + 10**9), (1000 + 10**9, 1000 + 2 * 10**9), (1000 + 2 * 10**9, None)]
    assert [w.lead_in_sets for w in windows] == [0, 1, 1]
    assert windows[1].read_range() == (1000 + 10**9 - int(3.01e9), 1000 + 2 * 10**9)


def _chunked(bag: Path, out: Path, argv: list[str], chunk_s: float) -> tuple:
    """Every window of ``bag`` through one in-process BagWorker, then the merge."""
    args = cli.parse_args([str(bag), '--out', str(out), *argv, '--chunk-seconds', str(chunk_s)])
    windows = chunks.plan(inputs.BagMetadata.read(bag), chunk_s, args.values)
    assert len(windows) > 2
    worker = BagWorker(args)
    target = inputs.BagInput(bag, bag.name)
    results = [worker.run(Job(f'{bag.name}#{k}', target, out, w, k))
               for k, w in enumerate(windows)]
    assert all(r.error is None for r in results), [r.error for r in results]
    total = replay.Summary()
    for r in results:
        total.add(r.summary)
    merged = worker.merge(Job(bag.name, target, out), [r.part for r in results],
                          sum(total.role_counts.values()))
    return merged, total


@pytest.mark.parametrize('mode', ['stereo', 'sequential'])
def test_chunks_concatenate_to_the_whole_bag_replay(tmp_path, mode):
    options = [*helpers.ORACLE, '--mode', mode, '--outputs',
               CHUNKED if mode == 'stereo' else CHUNKED.replace('disparity,', '')]
    if mode == 'stereo':   # drops and unpaired messages on both sides of the boundaries
        doubles.write_stereo_bag(tmp_path / 'bag', pairs=9, extra_left=2,
                                 nan_info_pairs=frozenset({2, 6}))
    else:
        doubles.write_sequence_bag(tmp_path / 'bag', frames=10)
    expected = helpers.reference(tmp_path / 'bag', tmp_path / 'ref', options)
    merged, total = _chunked(tmp_path / 'bag', tmp_path / 'out', options, chunk_s=0.25)
    assert merged.error is None
    assert assert_same_bag(tmp_path / 'out' / 'bag', expected) > 0
    assert not (tmp_path / 'out' / PARTIAL_DIR).exists() or \
        not any((tmp_path / 'out' / PARTIAL_DIR).iterdir())
    # The chunk summaries add up to the whole bag's (replay's own summary of it).
    whole = replay.replay_bag(replay.parse_args([str(tmp_path / 'bag'), str(tmp_path / 'w'),
                                                 *options])).summary
    assert (total.sets, total.processed, total.dropped_by_reason()) == \
        (whole.sets, whole.processed, whole.dropped_by_reason())
    assert sum(total.notes.values()) == sum(whole.notes.values())


def test_chunks_of_a_damaged_bag_fail_the_merge(tmp_path):
    doubles.write_stereo_bag(tmp_path / 'bag', pairs=12)
    path = tmp_path / 'bag' / 'bag.mcap'
    data = bytearray(path.read_bytes())
    data[200:4000] = bytes(range(256)) * 14 + bytes(range(216))   # as test_replay_failures
    path.write_bytes(bytes(data))
    merged, _ = _chunked(tmp_path / 'bag', tmp_path / 'out', [*helpers.ORACLE, '--outputs',
                                                              'warp'], chunk_s=0.3)
    assert 'truncated or corrupt' in merged.error
    assert not (tmp_path / 'out' / 'bag').exists()


# --- the worker without Ray -----------------------------------------------------------------

def test_worker_publishes_whole_bags_and_reports_bad_ones(tmp_path):
    doubles.write_stereo_bag(tmp_path / 'good', pairs=2)
    doubles.write_stereo_bag(tmp_path / 'bad', pairs=2)
    helpers.truncate_storage(tmp_path / 'bad')
    reports = []
    args = cli.parse_args([str(tmp_path), '--out', str(tmp_path / 'out'), *helpers.ORACLE])
    worker = BagWorker(args, report=lambda *item: reports.append(item))
    good = worker.run(Job('good', inputs.BagInput(tmp_path / 'good', 'sub/good'), tmp_path / 'out'))
    assert good.error is None and good.summary.processed == 2
    assert reports[-1] == ('good', 1, 2, 2, 2)               # key, attempt, done, processed, total
    assert_same_bag(tmp_path / 'out' / 'sub' / 'good',
                            helpers.reference(tmp_path / 'good', tmp_path / 'ref', helpers.ORACLE))
    assert (tmp_path / 'out' / 'sub' / 'good' / 'good.mcap').is_file()   # replay's file name
    bad = worker.run(Job('bad', inputs.BagInput(tmp_path / 'bad', 'bad'), tmp_path / 'out'))
    assert 'File end magic is invalid' in bad.error
    assert not (tmp_path / 'out' / 'bad').exists()
    assert not any((tmp_path / 'out' / PARTIAL_DIR).iterdir())
    assert worker.describe()['model_build_s'] >= 0


# --- report ---------------------------------------------------------------------------------

def test_table_lists_every_bag_and_the_failure_reasons():
    rows = [report.BagRow('a', '/a', 'done', frames=4, processed=3,
                          dropped={'nan_camera_info': 1}, seconds=1.25, attempts=2),
            report.BagRow('b', '/b', 'failed', reason='BagError: broken')]
    lines = report.table(rows)
    assert lines[0].split() == ['bag', 'status', 'frames', 'processed', 'dropped', 'seconds',
                                'attempts']
    assert lines[2].split() == ['a', 'done', '4', '3', 'nan_camera_info', '1', '1.2', '2']
    assert lines[-1] == 'b: BagError: broken'


# --- Ray stays out of the node ----------------------------------------------------------------

def test_node_and_replay_never_import_ray():
    code = textwrap.dedent('''
        import sys
        sys.modules['ray'] = None       # any "import ray" now raises ImportError
        import romav2_ros.node, romav2_ros.replay, romav2_ros.player
        from romav2_ros.fleet import chunks, inputs, manifest, report, worker, cli
        print('ok')
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr
    code = 'import sys, romav2_ros.node, romav2_ros.replay; print("ray" in sys.modules)'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == 'False', proc.stderr


def test_an_interrupt_that_ray_loses_still_ends_the_run(tmp_path, monkeypatch):
    """A SIGINT whose KeyboardInterrupt is swallowed inside a Ray call (here: inside the pool's
    wait) still interrupts the driver's loop at its next turn (before: the run went on and
    ended with exit status 0)."""
    import signal
    import types

    class LossyPool:
        """One job in flight that never finishes; its wait receives the interrupt and loses
        it, as a Ray call with SIGINT deferred can."""

        def __init__(self, ray, args, jobs):
            self.info = {'workers': 1, 'gpus_per_worker': 0.0, 'address': 'local'}
            self.idle, self.starting = [], {}
            self.inflight = {'ref': (0, None, False)}
            self.waits = 0

        def ready(self):
            self.waits += 1
            if self.waits == 2:
                try:
                    cli._on_interrupt(signal.SIGINT, None)
                except KeyboardInterrupt:
                    pass                        # lost inside the call
            if self.waits > 20:
                self.inflight.clear()           # the loop would have ended without it
            return []

        def live_frames(self):
            return {}

        def close(self):
            pass

    monkeypatch.setattr(cli, 'Pool', LossyPool)
    cli.INTERRUPT_REQUESTED.clear()
    run = cli.FleetRun(cli.parse_args([str(tmp_path), '--out', str(tmp_path / 'out')]))
    with pytest.raises(KeyboardInterrupt):
        run.execute(types.SimpleNamespace(__version__='(none)'), jobs=[], book=None)
    cli.INTERRUPT_REQUESTED.clear()
