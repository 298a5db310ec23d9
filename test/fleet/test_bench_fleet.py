"""bench/bench_fleet.py end to end at its smallest (on the session's Ray head, oracle model,
one worker count: each count is a romav2-batch run of its own): the JSON it prints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_fleet_smoke(ray_env, ray_head):
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'bench' / 'bench_fleet.py'), '--bags', '2', '--limit', '1',
         '--workers', '2', '--model-source', 'replay_doubles:oracle',
         '--ray-address', ray_head, '--node-ip-address', '127.0.0.1'],
        cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result['benchmark'] == 'fleet' and result['machine']['cpu_count'] >= 1
    (run,) = result['runs']
    assert run['workers'] == 2 and run['frames'] == 2 and run['frames_per_s'] > 0
    assert run['worker_s_per_frame'] > 0 and run['ray']['address'] == ray_head
    assert 1 <= len(run['model_build_s']) <= 2 and all(b >= 0 for b in run['model_build_s'])
    assert result['by_workers']['2']['speedup_over_first'] == 1.0
    assert 'fleet 2 bags: 2 worker(s)' in proc.stderr
