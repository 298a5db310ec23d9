"""bench/bench_replay.py end to end at its smallest size: both batch sizes ran, their outputs
agree (up to the batched model's float rounding), and the JSON says what it measured."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_replay_smoke():
    out = subprocess.run([sys.executable, str(ROOT / 'bench' / 'bench_replay.py'), '--smoke',
                          '--precision', 'fp32'], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout)
    assert r['benchmark'] == 'replay_batch' and r['machine']['cpu_count'] > 0
    assert [run['batch'] for run in r['runs']] == [1, 2]
    assert all(run['frames'] == 4 and run['frames_per_s'] > 0 for run in r['runs'])
    # fp32: batching changes only the summation order of the model's kernels
    assert r['runs'][1]['max_abs_diff_warp_px'] < 1e-2
    table = subprocess.run([sys.executable, str(ROOT / 'bench/results_table.py'), '/dev/stdin'],
                           input=out.stdout, capture_output=True, text=True, timeout=60,
                           check=True).stdout
    for run in r['runs']:
        assert f"| {run['batch']} | {run['frames_per_s']:.3f} frames/s |" in table
