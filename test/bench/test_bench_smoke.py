"""Each benchmark script and the evaluation run end to end at the smallest size (``--smoke``).

Subprocesses, as a user runs them; only the JSON keys (and the self-check) are checked. The
numbers are timings of seeded random weights on whatever machine runs the tests.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(script: str, *args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stderr.strip(), 'no one-line summary on stderr'
    return json.loads(out.stdout)


@pytest.mark.parametrize('precision,bidirectional', [('official', False), ('fp32', True)])
def test_bench_model_smoke(precision, bidirectional):
    r = run('bench/bench_model.py', '--smoke', '--precision', precision,
            *(['--bidirectional'] if bidirectional else []))
    assert r['benchmark'] == 'model_forward' and r['our_precision'] == precision
    assert r['bidirectional'] is bidirectional and r['batch'] == 1
    for side in ('ours', 'official'):
        assert (r[side]['H'], r[side]['W']) == (64, 96)
        assert r[side]['pairs_per_second'] > 0 and r[side]['peak_memory_mb'] > 0
    assert r['throughput_ratio_ours_over_official'] == pytest.approx(
        r['ours']['pairs_per_second'] / r['official']['pairs_per_second'])


def test_bench_local_corr_smoke():
    """The smallest run of the local-correlation benchmark; without CUDA the kernel column
    says why it is unavailable instead of a number."""
    r = run('bench/bench_local_corr.py', '--small', '--repeats', '1', '--batches', '1')
    assert len(r['cases']) == 4
    for case in r['cases']:
        for impl in ('torch_kloop', 'materialise'):
            assert case['results'][impl]['status'] == 'ok' and case['results'][impl]['ms'] > 0
        if not torch.cuda.is_available():
            assert case['results']['cuda']['status'] != 'ok'


@pytest.mark.parametrize('precision', ['official', 'fp32'])
def test_bench_stream_smoke(precision):
    r = run('bench/bench_stream.py', '--smoke', '--precision', precision)
    assert r['benchmark'] == 'stream' and r['our_precision'] == precision
    for side in ('ours', 'official'):
        assert r[side]['frames'] == 1 and r[side]['frames_per_second'] > 0
        assert (r[side]['H'], r[side]['W']) == (64, 96)
    assert r['frames_per_second_ratio_ours_over_official'] > 0
    assert {'machine', 'setting', 'device', 'weights'} <= set(r)


def test_bench_scaling_smoke(tmp_path):
    r = run('bench/bench_scaling.py', '--smoke', '--out-dir', str(tmp_path))
    assert r['benchmark'] == 'scaling'
    [row] = r['rows']
    assert row['size'] == 64 and row['seconds_per_pair'] > 0 and row['peak_memory_mb'] > 0
    md = (tmp_path / 'scaling.md').read_text()
    assert '| 64 |' in md and r['machine']['platform'] in md
    # 'auto' (the default) is reported as what it resolved to on this machine's hardware
    from romav2_core.precision import fast_bf16
    expected = 'bf16' if fast_bf16(r['device']) else 'fp32'
    assert r['precision'] == 'auto' and r['precision_resolved'] == expected
    assert f'resolved to {expected}' in md
    if r['plot'] is not None:
        assert (tmp_path / 'scaling.png').stat().st_size > 0


@pytest.mark.ros
def test_bench_node_smoke(ros_env_guard):
    r = run('bench/bench_node.py', '--smoke')
    assert r['benchmark'] == 'node_overhead'
    assert len(r['node']['latencies_s']) == 1 and r['node']['median_latency_s'] > 0
    assert r['raw_model']['median_model_s'] > 0
    assert {'overhead_ms', 'overhead_fraction_of_latency', 'transport'} <= set(r)


def test_bench_node_refuses_without_loopback_env():
    env = {k: v for k, v in __import__('os').environ.items()
           if k not in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID')}
    out = subprocess.run([sys.executable, str(ROOT / 'bench/bench_node.py'), '--smoke'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and 'unshare --net' in out.stderr


def test_run_eval_random_weights_smoke():
    r = run('eval/run_eval.py', '--random-weights', '--smoke')
    assert r['self_check']['passed'], r['self_check']['checks']
    assert 'MEANINGLESS' in r['warning'] and r['weights'].startswith('RANDOM')
    assert 'official' in r['methods_skipped']
    for name, n in r['datasets_run'].items():
        assert n == 1 and 'ours' in r['results'][name]
    assert 'motorcycle' in r['datasets_run']  # scikit-image is a base requirement
    moto = r['results']['motorcycle']
    assert {'dense', 'pose', 'seconds_per_pair'} <= set(moto['ours'])
    assert 'sgbm' in moto and moto['sgbm']['dense']['epe_mean'] < 2.0  # a real baseline
    assert set(r['datasets_skipped']) | set(r['datasets_run']) == {'motorcycle', 'chessboard'}


def test_results_table_renders_every_saved_result():
    """The docs' tables come from bench/results_table.py over docs/bench-results: each saved
    model/stream/node result appears with its own ratio and command."""
    files = sorted((ROOT / 'docs' / 'bench-results').rglob('*.json'))
    assert files
    out = subprocess.run([sys.executable, str(ROOT / 'bench/results_table.py'), *map(str, files)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    ratio_keys = {'model_forward': 'throughput_ratio_ours_over_official',
                  'stream': 'frames_per_second_ratio_ours_over_official'}
    rendered = 0
    for path in files:
        r = json.loads(path.read_text())
        if r['benchmark'] in ratio_keys:
            ratio = f"x{r[ratio_keys[r['benchmark']]]:.2f}"
            assert any(f"`{r['command']}`" in line and ratio in line
                       for line in out.splitlines()), (path, ratio)
            rendered += 1
    assert rendered


def test_bench_compile_smoke():
    """Cold and restart phases in two processes sharing one cache folder; aot_eager (no code
    generation) keeps it CI-sized. The restart gives the cold run's outputs, no graph break."""
    r = run('bench/bench_compile.py', '--smoke', '--bidirectional', 'uni')
    assert r['benchmark'] == 'compile' and r['backend'] == 'aot_eager'
    cold, warm = r['cold'], r['warm']
    assert cold['graph_breaks'] == 0 and warm['graph_breaks'] == 0
    [row] = cold['rows']
    assert row['warm_up_wall_s'] > 0 and row['eager_s_per_batch'] > 0
    assert set(row['max_abs_diff_compiled_vs_eager']) == {'warp_AB', 'overlap_AB',
                                                          'precision_AB'}
    assert warm['rows'][0]['same_outputs_as_cold'] is True


def test_profile_model_smoke():
    r = run('bench/profile_model.py', '--smoke')
    assert r['benchmark'] == 'profile' and r['forward_seconds'] > 0
    assert {'dinov3', 'vgg', 'mv_vit', 'dpt_head', 'refiner_4', 'local_correlation'} <= set(
        r['components_seconds'])
    assert r['ops'] and all(0 <= op['fraction'] <= 1 for op in r['ops'])


@pytest.mark.ros
def test_gpu_check_smoke(tmp_path, ros_env_guard):
    """scripts/gpu_check.sh --smoke: every step of the GPU acceptance script at toy sizes on
    the CPU, its JSON files and the one-screen summary."""
    out = subprocess.run(['bash', str(ROOT / 'scripts/gpu_check.sh'), '--smoke', '--out',
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if torch.cuda.is_available():
        assert out.returncode == 2 and 'run the full' in out.stderr
        return
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    steps = [line.split('\t') for line in (tmp_path / 'steps.tsv').read_text().splitlines()]
    assert [s[0] for s in steps] == ['gpu_tests', 'local_corr', 'model_base', 'model_turbo',
                                     'stream', 'node', 'rate', 'rate_peak'] and \
        all(s[1] == '0' for s in steps)
    for name in ('local_corr.json', 'model_base_b8.json', 'model_turbo_b8.json',
                 'stream_base.json', 'node_turbo.json', 'rate_30hz.json', 'rate_peak.json'):
        json.loads((tmp_path / name).read_text())
    summary = (tmp_path / 'summary.txt').read_text()
    assert 'gpu tests:' in summary and 'kernel benchmark' in summary and 'node:' in summary
    assert 'rate depth_points2 (random base)' in summary and ', peak ' in summary
    assert 'missing' not in summary.replace('compile_*.json: missing', '')
    assert summary.strip() in out.stdout


def test_gpu_check_refuses_the_full_run_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    out = subprocess.run(['bash', str(ROOT / 'scripts/gpu_check.sh')], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and '--smoke' in out.stderr


@pytest.mark.parametrize('order', [[], ['--sequential']], ids=['interleaved', 'sequential'])
def test_bench_revisions_smoke(order):
    """HEAD (exported by git archive) against the working tree, interleaved or one side after
    the other."""
    r = run('bench/bench_revisions.py', '--smoke', *order)
    assert r['sequential'] is bool(order)
    assert r['benchmark'] == 'revisions' and len(r['base_commit']) == 40
    assert r['base']['romav2_core'] != r['worktree']['romav2_core']
    assert r['worktree']['romav2_core'] == str(ROOT / 'romav2_core')
    assert r['speedup_worktree_over_base'] > 0 and len(r['speedup_per_round']) == 1


def test_bench_presets_smoke():
    """One row per preset asked, built as the node builds it (one direction), and the table
    generator prints each row with its time."""
    r = run('bench/bench_presets.py', '--smoke')
    assert r['benchmark'] == 'presets' and r['bidirectional'] is False
    (row,) = r['rows']
    assert row['setting'] == 'turbo' and (row['H_lr'], row['W_lr']) == (64, 64)
    assert row['seconds_per_pair'] > 0 and row['peak_memory_mb'] > 0
    assert row['H_hr'] is None
    out = subprocess.run([sys.executable, str(ROOT / 'bench/results_table.py'), '/dev/stdin'],
                         input=json.dumps(r), capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert f"| `turbo` | 64x64 | none | 640x480, one direction, {r['precision_resolved']} | " \
           f"{row['seconds_per_pair']:.2f} s" in out


def test_bench_pipeline_smoke():
    """The node's own time per set on the `turbo` grid, this tree against its last commit as
    the host stage runs both (one torch thread): every case, its stages and outputs, and the
    table generator prints each case with its time."""
    r = run('bench/bench_pipeline.py', '--setting', 'turbo', '--sets', '2', '--warmup', '1',
            '--rev', 'HEAD', '--rev-torch-threads', '1')
    assert r['benchmark'] == 'pipeline_own_time' and set(r['sides']) == {'current', 'HEAD'}
    assert r['sides']['HEAD']['torch_threads'] == 1
    side = r['sides']['current']
    assert side['grid'] == [320, 320] and side['torch_threads'] == 1
    cases = {k: v for k, v in side.items() if isinstance(v, dict)}
    assert set(cases) == {'relative_pose', 'depth_points2', 'odometry', 'all_but_pictures',
                          'sequential_pose'}
    assert cases['depth_points2']['outputs'] == ['depth', 'points2']
    assert {'products', 'pose'} <= set(cases['odometry']['stage_ms'])
    out = subprocess.run([sys.executable, str(ROOT / 'bench/results_table.py'), '/dev/stdin'],
                         input=json.dumps(r), capture_output=True, text=True, timeout=60,
                         check=True).stdout
    for case, c in cases.items():
        assert f"| `{case}` (" in out and f"{c['wall_ms']:.1f} ms (" in out
