"""Time and accuracy of the two pose estimators, this tree against an earlier revision.

``romav2_core.pose.estimate_relative_pose`` (essential matrix, the two-view pose) and
``romav2_core.odometry.estimate_metric_pose`` (stereo PnP, the odometry step) on synthetic
match sets as the node gives them (``--matches``, default the node's ``num_samples`` 2000):
a 640 x 480 camera with fx 520 != fy 500, points at 2-30 m (uniform in log depth) seen by
both cameras, the motion of a moving robot (0.1-0.5 m mostly forward, 1-5 deg about a random
axis), per-match anisotropic 2x2 covariances of ``--noise`` px (0.6-1.4 x, the axes 0.7-1.3 x
apart) with Gaussian noise drawn from them on the inliers, outliers spread uniformly over B,
and for PnP A's disparities (baseline 0.12 m, ``d >= 2`` px as the node keeps) with noise of
the same size and their variances. Every case (inlier ratio x noise) draws ``--calls`` sets;
each set goes through both sides in turn (the order alternating), so that they see the same
machine load.

A third side of the PnP, ``predicted``, is this tree given a prediction of the pose
(``prior``: the true motion off by :data:`PREDICTION_ERROR`, about what the odometry's
constant-velocity motion model gives it while tracking): its time and accuracy where the
prediction replaces RANSAC (``prediction_share``: the calls where it did).

The other side is the code of ``--baseline-rev`` (default: the last revision before these
estimators were reworked), read with ``git show`` into a temporary module at run time. With
poselib installed, its own estimators (LO-RANSAC + refinement, no covariance) are timed on
the same sets as a reference.

Reported per estimator, case and side: wall time per call (median, p90) and its CPU time
(median, less sensitive to other processes), rotation error and translation error (the
direction's angle for the essential matrix, % of the motion for PnP; median, p90), inlier
recall and outlier acceptance, failures, and the mean normalised estimation error squared of
the covariance (rotation block for the essential matrix, 3 when calibrated; all 6 for PnP,
6 when calibrated; the inlier threshold truncates the noise and leaves outliers in, so
neither is exactly met).

    .venv/bin/python bench/bench_pose.py                   # 2000 matches, 50 calls a case
    .venv/bin/python bench/bench_pose.py --smoke           # CI: 200 matches, 3 calls, 1 case

Prints one JSON object (machine, command, per estimator and case both sides).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from romav2_core.odometry import estimate_metric_pose  # noqa: E402
from romav2_core.pose import estimate_relative_pose  # noqa: E402

#: The revision before the estimators were reworked for the per-set time budget.
BASELINE_REV = '47190d3'
WIDTH, HEIGHT = 640, 480
K = np.array([[520.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
BASELINE_M = 0.12
MIN_DISPARITY_PX = 2.0          # the node keeps matches with at least this disparity


def motion(rng) -> tuple:
    """``(R, t)`` of A in B: 1-5 deg about a random axis, 0.1-0.5 m mostly along z."""
    axis = rng.normal(size=3)
    R = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(rng.uniform(1, 5)))[0]
    direction = np.array([rng.normal(0, 0.3), rng.normal(0, 0.1), 1.0])
    return R, direction / np.linalg.norm(direction) * rng.uniform(0.1, 0.5)


def match_set(rng, n: int, inlier_ratio: float, noise_px: float) -> dict:
    """One synthetic set (see the module docstring): pixels of A ``pa`` and B ``pb``
    ``[n x 2]``, B's covariances ``cov`` ``[n x 2 x 2]``, ``outlier`` ``[n]``, A's disparities
    ``d`` and variances ``var_d`` ``[n]``, ``fT`` and the true ``R``, ``t``."""
    R, t = motion(rng)
    fT = K[0, 0] * BASELINE_M
    K_inv = np.linalg.inv(K)
    pa, depth, pb = np.empty((0, 2)), np.empty(0), np.empty((0, 2))
    while len(pa) < n:               # points seen by both cameras
        p = rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (2 * n, 2))
        z = np.exp(rng.uniform(np.log(2.0), np.log(30.0), 2 * n))
        Y = (np.c_[p, np.ones(2 * n)] @ K_inv.T * z[:, None]) @ R.T + t
        q = Y[:, :2] / Y[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
        seen = (Y[:, 2] > 0) & (q >= 0).all(1) & (q <= [WIDTH - 1, HEIGHT - 1]).all(1)
        pa, depth, pb = np.r_[pa, p[seen]], np.r_[depth, z[seen]], np.r_[pb, q[seen]]
    pa, depth, pb = pa[:n], depth[:n], pb[:n]
    sx = noise_px * rng.uniform(0.6, 1.4, n)
    sy = sx * rng.uniform(0.7, 1.3, n)
    cov = np.zeros((n, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sx ** 2, sy ** 2
    pb = pb + rng.normal(size=(n, 2)) * np.c_[sx, sy]
    outlier = rng.random(n) >= inlier_ratio
    pb[outlier] = rng.uniform([0, 0], [WIDTH - 1, HEIGHT - 1], (outlier.sum(), 2))
    sd = noise_px * rng.uniform(0.6, 1.4, n)
    d = np.zeros(n)
    low = np.ones(n, bool)
    while low.any():                 # a disparity the node keeps
        d[low] = fT / depth[low] + rng.normal(size=low.sum()) * sd[low]
        low = d < MIN_DISPARITY_PX
    return {'pa': pa, 'pb': pb, 'cov': cov, 'outlier': outlier, 'd': d, 'var_d': sd ** 2,
            'fT': fT, 'R': R, 't': t}


def rotation_error_deg(R_est, R_true) -> float:
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(R_est @ R_true.T)[0])))


def error_essential(est, s) -> dict:
    t_dir = s['t'] / np.linalg.norm(s['t'])
    d_theta = cv2.Rodrigues(est.R @ s['R'].T)[0].ravel()
    C = est.covariance[3:, 3:]
    return {'rotation_deg': rotation_error_deg(est.R, s['R']),
            'translation': float(np.degrees(np.arccos(np.clip(est.t @ t_dir, -1, 1)))),
            'nees': float(d_theta @ np.linalg.solve(C, d_theta))}


def error_metric(est, s) -> dict:
    e = np.r_[est.t - s['t'], cv2.Rodrigues(est.R @ s['R'].T)[0].ravel()]
    return {'rotation_deg': rotation_error_deg(est.R, s['R']),
            'translation': float(100 * np.linalg.norm(e[:3]) / np.linalg.norm(s['t'])),
            'nees': float(e @ np.linalg.solve(est.covariance, e))}


def load_baseline(rev: str) -> dict:
    """The two estimators of revision ``rev`` (``git show``), as module-level callables."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (('pose', 'estimate_relative_pose'),
                         ('odometry', 'estimate_metric_pose')):
            src = subprocess.run(['git', 'show', f'{rev}:romav2_core/{name}.py'],
                                 cwd=common.ROOT, capture_output=True, text=True, check=True)
            path = Path(tmp) / f'baseline_{name}.py'
            path.write_text(src.stdout)
            spec = importlib.util.spec_from_file_location(f'baseline_{name}', path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module      # dataclasses look their module up
            spec.loader.exec_module(module)
            out[name] = getattr(module, fn)
    return out


#: How far the ``predicted`` side's prediction is from the true motion: a rotation of 0.2 deg
#: about a fixed axis, and the translation off by 2 % of its length sideways.
PREDICTION_ERROR = (cv2.Rodrigues(np.radians(0.2) * np.array([0.6, 0.8, 0.0]))[0], 0.02)


def prediction(s: dict) -> tuple:
    R_err, share = PREDICTION_ERROR
    return R_err @ s['R'], s['t'] + share * np.linalg.norm(s['t']) * np.array([1.0, 0.0, 0.0])


def essential_call(fn: Callable, threshold_px: float) -> Callable:
    return lambda s: fn(s['pa'], s['pb'], K, K, cov_b=s['cov'],
                        ransac_threshold_px=threshold_px)


def metric_call(fn: Callable, threshold_px: float, predicted: bool = False) -> Callable:
    extra = (lambda s: {'prior': prediction(s)}) if predicted else (lambda s: {})
    return lambda s: fn(s['pa'], s['d'], s['var_d'], s['pb'], s['cov'], K, K, s['fT'],
                        threshold_px, **extra(s))


def poselib_calls(threshold_px: float) -> Optional[dict]:
    """poselib's own estimators on the same sets (its defaults but the threshold), returning
    ``(R, t, inliers)``; None when poselib is not installed."""
    try:
        import poselib
    except ImportError:
        return None
    cam = {'model': 'PINHOLE', 'width': WIDTH, 'height': HEIGHT,
           'params': [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}

    def essential(s):
        pose, info = poselib.estimate_relative_pose(s['pa'], s['pb'], cam, cam,
                                                    {'max_epipolar_error': threshold_px})
        return pose.R, pose.t / np.linalg.norm(pose.t), np.asarray(info['inliers'], bool)

    def metric(s):
        X = np.c_[s['pa'], np.ones(len(s['pa']))] @ np.linalg.inv(K).T * (s['fT'] / s['d'])[:, None]
        pose, info = poselib.estimate_absolute_pose(s['pb'], X, cam,
                                                    {'max_reproj_error': threshold_px})
        return pose.R, pose.t, np.asarray(info['inliers'], bool)
    return {'essential': essential, 'metric': metric}


def summarise(rows: list[dict], with_nees: bool = True) -> dict:
    ok = [r for r in rows if r['ok']]

    def stat(key, scale=1.0):
        xs = [r[key] * scale for r in ok]
        if not xs:
            return None
        return {'median': statistics.median(xs), 'p90': float(np.percentile(xs, 90))}
    out = {'time_ms': stat('wall', 1e3), 'cpu_time_ms_median': statistics.median(
        r['cpu'] for r in rows) * 1e3, 'rotation_error_deg': stat('rotation_deg'),
        'translation_error': stat('translation'), 'failures': len(rows) - len(ok),
        'inlier_recall': float(np.mean([r['recall'] for r in ok])) if ok else None,
        'outlier_acceptance': float(np.mean([r['accepted'] for r in ok])) if ok else None}
    if with_nees:
        out['nees_mean'] = float(np.mean([r['nees'] for r in ok])) if ok else None
    if any('predicted' in r for r in ok):
        out['prediction_share'] = float(np.mean([r['predicted'] for r in ok]))
    return out


def run_case(estimator: str, sides: dict, sets: list[dict]) -> dict:
    """Every set through every side, the order alternating; per side its summary."""
    errors = error_essential if estimator == 'essential' else error_metric
    rows = {name: [] for name in sides}
    names = list(sides)
    for i, s in enumerate(sets):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            est = sides[name](s)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            row = {'wall': wall, 'cpu': cpu, 'ok': est is not None}
            if est is not None:
                if isinstance(est, tuple):           # the poselib reference: (R, t, inliers)
                    R, t, inliers = est
                    t_err = (np.degrees(np.arccos(np.clip(t @ s['t'] / np.linalg.norm(s['t']),
                                                          -1, 1)))
                             if estimator == 'essential'
                             else 100 * np.linalg.norm(t - s['t']) / np.linalg.norm(s['t']))
                    row.update(rotation_deg=rotation_error_deg(R, s['R']),
                               translation=float(t_err))
                else:
                    inliers = est.inliers
                    row.update(errors(est, s))
                    if name == 'predicted':
                        row['predicted'] = est.seeded_by == 'prediction'
                row.update(recall=float(inliers[~s['outlier']].mean()),
                           accepted=float(inliers[s['outlier']].mean())
                           if s['outlier'].any() else 0.0)
            rows[name].append(row)
    return {name: summarise(r, with_nees=name != 'poselib') for name, r in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--matches', type=int, default=2000)
    p.add_argument('--calls', type=int, default=50, help='match sets per case')
    p.add_argument('--inlier-ratios', type=float, nargs='+', default=[0.6, 0.8, 0.95])
    p.add_argument('--noise', type=float, nargs='+', default=[0.3, 0.5, 1.0],
                   help='match noise, px (the covariances and the disparity noise alike)')
    p.add_argument('--threshold-px', type=float, default=1.0,
                   help="inlier threshold of both estimators (the node's ransac_threshold_px)")
    p.add_argument('--baseline-rev', default=BASELINE_REV)
    p.add_argument('--no-poselib', action='store_true', help='skip the poselib reference')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--smoke', action='store_true',
                   help='CI: 200 matches, 3 calls, inlier ratio 0.8, noise 0.5 px')
    args = p.parse_args()
    if args.smoke:
        args.matches, args.calls, args.inlier_ratios, args.noise = 200, 3, [0.8], [0.5]
    baseline = load_baseline(args.baseline_rev)
    reference = None if args.no_poselib else poselib_calls(args.threshold_px)
    sides = {
        'essential': {'ours': essential_call(estimate_relative_pose, args.threshold_px),
                      'baseline': essential_call(baseline['pose'], args.threshold_px)},
        'metric': {'ours': metric_call(estimate_metric_pose, args.threshold_px),
                   'predicted': metric_call(estimate_metric_pose, args.threshold_px,
                                            predicted=True),
                   'baseline': metric_call(baseline['odometry'], args.threshold_px)}}
    if reference is not None:
        for estimator in sides:
            sides[estimator]['poselib'] = reference[estimator]
    rng = np.random.default_rng(args.seed)
    warm = match_set(rng, args.matches, 0.8, 0.5)
    for estimator in sides:
        for call in sides[estimator].values():
            call(warm)
    cases = []
    for ratio in args.inlier_ratios:
        for noise in args.noise:
            sets = [match_set(rng, args.matches, ratio, noise) for _ in range(args.calls)]
            for estimator in sides:
                cases.append({'estimator': estimator, 'inlier_ratio': ratio, 'noise_px': noise,
                              **run_case(estimator, sides[estimator], sets)})
    for case in cases:
        case['speedup_median'] = (case['baseline']['time_ms']['median']
                                  / case['ours']['time_ms']['median'])
    result = {'benchmark': 'pose', 'command': ' '.join(['bench/bench_pose.py', *sys.argv[1:]]),
              'machine': common.machine(), 'opencv': cv2.__version__,
              'opencv_threads': cv2.getNumThreads(), 'matches': args.matches,
              'calls': args.calls, 'threshold_px': args.threshold_px,
              'baseline_rev': args.baseline_rev,
              'poselib': 'not installed' if reference is None and not args.no_poselib
              else ('skipped' if args.no_poselib else 'installed'),
              'translation_error_units': {'essential': 'deg (direction)',
                                          'metric': '% of the motion'},
              'prediction_error': {'rotation_deg': 0.2, 'translation_share': 0.02},
              'cases': cases}
    common.report(result, 'pose: ' + ', '.join(
        f"{c['estimator']} {c['inlier_ratio']:.2f}/{c['noise_px']:g}px "
        f"{c['baseline']['time_ms']['median']:.1f} -> {c['ours']['time_ms']['median']:.1f} ms"
        + (f" (predicted {c['predicted']['time_ms']['median']:.1f})" if 'predicted' in c else '')
        for c in cases))


if __name__ == '__main__':
    main()
