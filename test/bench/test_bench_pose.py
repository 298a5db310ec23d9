"""bench/bench_pose.py end to end at its smallest size (``--smoke``): both estimators ran on
both sides (this tree and the baseline revision read from git) on the same sets, the JSON says
what it measured, and results_table prints it. The numbers are timings of whatever machine
runs the tests; only their presence and plausibility are checked."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pose_smoke():
    out = subprocess.run([sys.executable, str(ROOT / 'bench' / 'bench_pose.py'), '--smoke'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stderr.strip(), 'no one-line summary on stderr'
    r = json.loads(out.stdout)
    assert r['benchmark'] == 'pose' and r['command'] == 'bench/bench_pose.py --smoke'
    assert r['machine']['cpu_count'] > 0 and r['matches'] == 200 and r['calls'] == 3
    assert [c['estimator'] for c in r['cases']] == ['essential', 'metric']
    for case in r['cases']:
        assert (case['inlier_ratio'], case['noise_px']) == (0.8, 0.5)
        for side in ('ours', 'baseline') + (('predicted',) if case['estimator'] == 'metric'
                                             else ()):
            s = case[side]
            assert s['failures'] == 0 and s['time_ms']['median'] > 0
            assert s['time_ms']['p90'] >= s['time_ms']['median']
            # 200 matches with 0.5 px noise: any working estimator is within a degree
            assert s['rotation_error_deg']['median'] < 1.0
            assert 0.5 < s['inlier_recall'] <= 1.0 and s['nees_mean'] > 0
        # the PnP given a prediction 0.2 deg off the truth: it explains the matches, no RANSAC
        if case['estimator'] == 'metric':
            assert case['predicted']['prediction_share'] == 1.0
        assert 'prediction_share' not in case['ours']
        assert case['speedup_median'] == case['baseline']['time_ms']['median'] \
            / case['ours']['time_ms']['median']
    table = subprocess.run([sys.executable, str(ROOT / 'bench/results_table.py'), '/dev/stdin'],
                           input=out.stdout, capture_output=True, text=True, timeout=60,
                           check=True).stdout
    for case in r['cases']:
        assert f"{case['ours']['time_ms']['median']:.1f} / " in table
        if 'predicted' in case:
            assert f"given a prediction {case['predicted']['time_ms']['median']:.1f} / " \
                in table
        assert f"x{case['speedup_median']:.1f}" in table
