"""Evaluate RoMa v2 (ours, and the official model when it can run) on real pairs with GT.

Runs with any weights; the numbers mean something only with the real RoMa v2 weights
(``--weights romav2.0.1.pt``). With ``--random-weights`` the output says loudly that the
accuracy numbers are meaningless (the run then only proves the harness and the plumbing).

Always first: a harness self-check on the Motorcycle GT (or a synthetic homography if
scikit-image is absent): the GT warp itself must give EPE 0, the GT plus isotropic Gaussian noise
of sigma px a mean EPE of sigma * sqrt(pi / 2) (1.2533 for 1 px), the correctly specified
covariance sigma^2 I the 2-D Gaussian coverage (39.3 / 86.5 / 98.9 % inside the 1/2/3-sigma
ellipses), and GT correspondences the GT pose (0 deg).

Methods per pair, in the same tables: ``ours`` (romav2_core RoMaV2), ``official`` (romav2
2.0.1 with our DINOv3 injected through test/official_oracle.py and the same weights; skipped with
the reason when it cannot run), ``sgbm`` (OpenCV StereoSGBM, rectified stereo pairs only).
Metrics (eval/metrics.py): EPE / PCK@1,3,5 px / density on dense GT (Motorcycle, Aloe,
Graffiti), EPE at the GT chessboard corners, |y_B - y_A| on rectified OAK-D pairs, certainty
calibration (EPE by certainty quantile), covariance calibration, and the relative-pose error
(rotation, translation direction) with poselib (when installed) and with the node's solver
(romav2_core.pose), from 2000 matches sampled from the dense warp by certainty.

    .venv/bin/python eval/run_eval.py --weights ~/romav2.0.1.pt --setting base
    .venv/bin/python eval/run_eval.py --random-weights --smoke     # CI: harness + plumbing
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after an installed romav2_ros (a colcon install space)
sys.path.insert(0, str(ROOT / 'eval'))
import datasets  # noqa: E402
import metrics  # noqa: E402

RANDOM_WARNING = ('RANDOM WEIGHTS: every accuracy number below is MEANINGLESS (seeded random '
                  'initialisation, not RoMa v2). Only the self-check and the plumbing are '
                  'tested. Use --weights romav2.0.1.pt for real numbers.')
NUM_POSE_MATCHES = 2000


# ------------------------------------------------------------------------------ models
def build_models(args) -> tuple[dict, dict]:
    """``{'ours': model, 'official': model}`` (official only when it can run) and
    ``{name: reason}`` for the skipped ones."""
    from romav2_core.model import RoMaV2
    overrides = {}
    if args.size:
        overrides.update(H_lr=args.size[0], W_lr=args.size[1], H_hr=None, W_hr=None)
    if args.random_weights:
        ours = RoMaV2.from_random(seed=args.seed, setting=args.setting, device=args.device,
                                  **overrides)
    else:
        ours = RoMaV2.from_pretrained(weights=args.weights, setting=args.setting,
                                      device=args.device, download=False, **overrides)
    models, skipped = {'ours': ours}, {}
    if args.no_official:
        skipped['official'] = '--no-official' if not args.smoke else '--smoke (time)'
    else:
        try:
            models['official'] = build_official_like(ours, args.setting, args.device)
        except Exception as exc:  # e.g. romav2 not installed
            skipped['official'] = f'cannot build the official model: {type(exc).__name__}: {exc}'
    return models, skipped


def build_official_like(ours, setting: str, device: str):
    """The official romav2 2.0.1 with our DINOv3 injected and ``ours``' weights and sizes."""
    sys.path.insert(0, str(ROOT / 'test'))
    from official_oracle import build_official_model
    from romav2_core.dinov3 import DINOv3ViTL16

    class Backbone(DINOv3ViTL16):  # the official wrapper patches type(backbone).forward
        pass
    official = build_official_model(Backbone, setting=setting)
    torch.nn.Module.load_state_dict(official, ours.state_dict(), strict=True)
    for key in ('H_lr', 'W_lr', 'H_hr', 'W_hr', 'bidirectional'):
        setattr(official, key, getattr(ours, key))
    return official.to(device).eval()


def dense_from_preds(preds: dict, hw_A, hw_B) -> dict:
    """Model-grid outputs -> A's resolution: warp (OpenCV px of B), certainty, covariance
    (px^2 of B), as the node's pipeline does (bilinear, align_corners=False)."""
    from romav2_core import geometry
    warp = preds['warp_AB'][0].float()
    overlap = preds['overlap_AB'][0].float()
    cov = preds.get('covariance_AB')
    cov = (cov[0] if cov is not None else
           geometry.precision_to_covariance(preds['precision_AB'][0])).float()
    ho, wo = warp.shape[:2]
    stack = torch.cat([warp, overlap, cov.reshape(ho, wo, 4)], -1).permute(2, 0, 1)[None]
    up = torch.nn.functional.interpolate(stack, size=tuple(hw_A), mode='bilinear',
                                         align_corners=False)[0].permute(1, 2, 0)
    warp_px = geometry.to_pixel_coordinates(up[..., :2], *hw_B).cpu().numpy()
    cov_up = geometry.rescale_covariance(up[..., 3:7].reshape(*hw_A, 2, 2), ho, wo, *hw_B)
    return {'warp': warp_px.astype(np.float64), 'certainty': up[..., 2].clamp(0, 1).cpu().numpy(),
            'covariance': cov_up.cpu().numpy().astype(np.float64)}


def run_model(model, pair: datasets.Pair) -> dict:
    with torch.inference_mode():
        preds = model.match(pair.img_A, pair.img_B)
    return dense_from_preds(preds, pair.img_A.shape[:2], pair.img_B.shape[:2])


def run_sgbm(pair: datasets.Pair) -> dict:
    """OpenCV StereoSGBM (the parameters of real-data.md section 5) as a dense warp."""
    s = pair.notes.get('downscaled_by', 1.0)
    nd = int(math.ceil(pair.notes.get('sgbm_num_disparities', 64) * s / 16)) * 16
    sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=max(16, nd), blockSize=5,
                                 P1=8 * 3 * 25, P2=32 * 3 * 25, uniquenessRatio=10,
                                 speckleWindowSize=100, speckleRange=2,
                                 mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    gray = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (pair.img_A, pair.img_B)]
    disp = sgbm.compute(*gray).astype(np.float64) / 16
    valid = disp >= 0
    return {'warp': datasets.warp_from_disparity(disp, valid), 'certainty': None,
            'covariance': None}


# ------------------------------------------------------------------------------ scoring
def bilinear(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Sample ``field [H x W x C]`` at OpenCV-pixel points ``[N x 2]`` (NaN outside)."""
    h, w = field.shape[:2]
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    out = np.full((len(pts), field.shape[2]), np.nan)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 < w - 1) & (y0 < h - 1)
    fx, fy = (x - x0)[ok, None], (y - y0)[ok, None]
    x0, y0 = x0[ok], y0[ok]
    out[ok] = (field[y0, x0] * (1 - fx) * (1 - fy) + field[y0, x0 + 1] * fx * (1 - fy)
               + field[y0 + 1, x0] * (1 - fx) * fy + field[y0 + 1, x0 + 1] * fx * fy)
    return out


def sample_matches(dense: dict, num: int, seed: int = 0):
    """``num`` pixels of A with a finite warp, drawn by certainty (uniformly without one)."""
    warp = dense['warp']
    ok = np.isfinite(warp).all(-1)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2)), None
    w = None
    if dense.get('certainty') is not None:
        w = dense['certainty'].reshape(-1)[idx].astype(np.float64)
        w = w / w.sum() if w.sum() > 0 else None
    rng = np.random.default_rng(seed)
    pick = rng.choice(idx, size=min(num, len(idx)), replace=False, p=w)
    v, u = np.unravel_index(pick, warp.shape[:2])
    cov = None if dense.get('covariance') is None else \
        dense['covariance'].reshape(-1, 2, 2)[pick]
    return np.stack([u, v], -1).astype(np.float64), warp.reshape(-1, 2)[pick], cov


def score(pair: datasets.Pair, dense: dict, solvers: list[str]) -> dict:
    out = {}
    if pair.gt_warp is not None:
        err, epe, has = metrics.end_point_error(dense['warp'], pair.gt_warp)
        out['dense'] = metrics.epe_summary(epe, has)
        gt_valid = np.isfinite(pair.gt_warp).all(-1)
        if dense.get('certainty') is not None:
            out['certainty_calibration'] = metrics.certainty_calibration(
                epe, dense['certainty'][gt_valid])
        if dense.get('covariance') is not None:
            out['covariance_calibration'] = metrics.covariance_calibration(
                err[has], dense['covariance'][gt_valid][has])
    if pair.gt_points is not None:
        pa, pb = pair.gt_points
        pred = bilinear(dense['warp'], pa)
        epe = np.linalg.norm(pred - pb, axis=-1)
        out['corners'] = metrics.epe_summary(epe, np.isfinite(epe))
    if pair.stereo_rectified and pair.gt_warp is None:
        ok = np.isfinite(dense['warp']).all(-1)
        v = np.mgrid[0:ok.shape[0], 0:ok.shape[1]][0]
        dy = np.abs(dense['warp'][..., 1] - v)[ok]
        out['epipolar_rows'] = {'median_abs_dy_px': float(np.median(dy)) if len(dy) else None,
                                'share_abs_dy_le_1px': float((dy <= 1).mean()) if len(dy)
                                else None, 'density': float(ok.mean())}
    if pair.has_pose:
        pa, pb, cov = sample_matches(dense, NUM_POSE_MATCHES)
        out['pose'] = {}
        for solver in solvers:
            try:
                est = metrics.estimate_pose(pa, pb, pair.K_A, pair.K_B, pair.D_A, pair.D_B,
                                            solver=solver,
                                            cov_B=cov if solver == 'node' else None)
            except Exception as exc:  # a degenerate sample: report, do not abort
                est = None
                out['pose'][f'{solver}_error'] = f'{type(exc).__name__}: {exc}'
            out['pose'][solver] = metrics.pose_errors(est, pair.R, pair.t)
    return out


def _mean(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def aggregate(per_pair: list[dict]) -> dict:
    """Mean over the pairs of each scalar metric (pose: also the failure count)."""
    out = {}
    for section in ('dense', 'corners', 'epipolar_rows', 'covariance_calibration'):
        rows = [p[section] for p in per_pair if section in p]
        if rows:
            out[section] = {k: _mean([r[k] for r in rows]) for k in rows[0]
                            if not isinstance(rows[0][k], (list, dict, str))}
    poses = [p['pose'] for p in per_pair if 'pose' in p]
    if poses:
        out['pose'] = {}
        for solver in [k for k in poses[0] if not k.endswith('_error')]:
            rs = [p[solver] for p in poses if solver in p]
            out['pose'][solver] = {
                'rotation_deg_mean': _mean([r['rotation_deg'] for r in rs]),
                'rotation_deg_median': float(np.median([r['rotation_deg'] for r in rs
                                                        if not r['failed']]))
                if any(not r['failed'] for r in rs) else None,
                'translation_direction_deg_mean': _mean([r['translation_direction_deg']
                                                         for r in rs]),
                'failures': sum(r['failed'] for r in rs), 'pairs': len(rs)}
    return out


# --------------------------------------------------------------------------- self-check
def self_check(max_size: int, solvers: list[str], sigma: float = 1.0) -> dict:
    """GT and noisy-GT warps through the same scoring as the models (see module docstring)."""
    found, _ = datasets.load(['motorcycle'], max_size=max_size)
    if found:
        pair = found['motorcycle'][0]
    else:  # synthetic: a random texture under a known homography, with a pose-free GT
        rng = np.random.default_rng(0)
        img = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
        H = np.array([[1.02, 0.01, 3.0], [-0.01, 0.99, -2.0], [1e-5, 0, 1.0]])
        pair = datasets.Pair('synthetic', 'homography', img, img,
                             gt_warp=datasets.warp_from_homography(H, (240, 320), (240, 320)))
    rng = np.random.default_rng(0)
    gt = pair.gt_warp
    exact = {'warp': gt.copy(), 'certainty': np.isfinite(gt).all(-1).astype(np.float64),
             'covariance': np.broadcast_to(np.eye(2) * sigma ** 2, gt.shape[:2] + (2, 2))}
    noisy = dict(exact, warp=gt + rng.normal(0, sigma, gt.shape))
    s_exact = score(pair, exact, solvers)
    s_noisy = score(pair, noisy, solvers)
    expected_epe = sigma * math.sqrt(math.pi / 2)
    cc = s_noisy['covariance_calibration']
    checks = {
        'gt_epe_is_zero': s_exact['dense']['epe_mean'] < 1e-9,
        'noisy_epe_matches_sigma': abs(s_noisy['dense']['epe_mean'] - expected_epe)
        < 0.02 * expected_epe,
        'covariance_coverage_matches_chi2': all(
            abs(cc[f'inside_{k}'] - cc[f'expected_{k}']) < 0.01 for k in ('1sigma', '2sigma',
                                                                         '3sigma')),
    }
    if 'pose' in s_exact:
        checks['gt_pose_is_exact'] = all(
            r['rotation_deg'] is not None and r['rotation_deg'] < 0.05
            and r['translation_direction_deg'] < 0.1
            for k, r in s_exact['pose'].items() if not k.endswith('_error'))
    return {'pair': f'{pair.dataset}/{pair.name} {pair.img_A.shape[1]}x{pair.img_A.shape[0]}',
            'noise_sigma_px': sigma, 'expected_noisy_epe_mean': expected_epe,
            'gt': s_exact, 'noisy_gt': s_noisy, 'checks': checks,
            'passed': all(checks.values())}


# ---------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument('--weights', help='RoMa v2 checkpoint (romav2.0.1.pt)')
    w.add_argument('--random-weights', action='store_true',
                   help='seeded random weights: plumbing only, numbers meaningless')
    p.add_argument('--setting', default='base', choices=['turbo', 'fast', 'base', 'precise',
                                                         'mega1500'])
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                   help='override H_lr W_lr (and drop the HR pass)')
    p.add_argument('--datasets', default=None,
                   help='comma-separated subset of ' + ','.join(datasets.LOADERS) +
                        ' (default: all; --smoke: motorcycle,chessboard)')
    p.add_argument('--max-size', type=int, default=0,
                   help='shrink pairs whose longer side exceeds this (0 = never)')
    p.add_argument('--max-pairs', type=int, default=0, help='per dataset (0 = all)')
    p.add_argument('--no-official', action='store_true', help='skip the official model')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--per-pair', action='store_true', help='also print every pair\'s metrics')
    p.add_argument('--smoke', action='store_true',
                   help='CI: turbo at 64x96, motorcycle + chessboard (1 pair each), max size '
                        '320, no official')
    args = p.parse_args()
    if args.smoke:
        args.setting, args.size, args.max_pairs, args.no_official = 'turbo', [64, 96], 1, True
        args.max_size = args.max_size or 320
        args.datasets = args.datasets or 'motorcycle,chessboard'
    args.datasets = args.datasets or ','.join(datasets.LOADERS)
    if args.random_weights:
        print('=' * 78 + '\n' + RANDOM_WARNING + '\n' + '=' * 78, file=sys.stderr)
    solvers = (['poselib'] if metrics.poselib_available() else []) + ['node']

    t0 = time.perf_counter()
    check = self_check(args.max_size, solvers)
    names = [n.strip() for n in args.datasets.split(',') if n.strip()]
    present, skipped = datasets.load(names, max_size=args.max_size, max_pairs=args.max_pairs)
    models, skipped_methods = build_models(args)

    results, per_pair = {}, {}
    for name, pairs in present.items():
        results[name], per_pair[name] = {}, {}
        methods = dict(models)
        if all(pr.stereo_rectified for pr in pairs):
            methods['sgbm'] = None
        for method, model in methods.items():
            rows, seconds = [], []
            for pair in pairs:
                t = time.perf_counter()
                dense = run_sgbm(pair) if method == 'sgbm' else run_model(model, pair)
                seconds.append(time.perf_counter() - t)
                rows.append({'pair': pair.name, **score(pair, dense, solvers)})
            results[name][method] = {'pairs': len(rows), **aggregate(rows),
                                     'seconds_per_pair': float(np.mean(seconds))}
            per_pair[name][method] = rows
    m = models['ours']
    from romav2_core.config import RoMaV2Config  # noqa: F401  (documents the cfg type)
    out = {'evaluation': 'romav2 real-data',
           'weights': 'RANDOM (numbers meaningless)' if args.random_weights else args.weights,
           'warning': RANDOM_WARNING if args.random_weights else None,
           'command': ' '.join(['eval/run_eval.py', *sys.argv[1:]]),
           'setting': args.setting, 'H_lr': m.H_lr, 'W_lr': m.W_lr, 'H_hr': m.H_hr,
           'W_hr': m.W_hr, 'bidirectional': m.bidirectional, 'device': args.device,
           'max_size': args.max_size, 'pose_solvers': solvers,
           'pose_matches': NUM_POSE_MATCHES, 'self_check': check,
           'datasets_run': {k: len(v) for k, v in present.items()},
           'datasets_skipped': skipped, 'methods_skipped': skipped_methods,
           'results': results, 'seconds_total': time.perf_counter() - t0}
    if args.per_pair:
        out['per_pair'] = per_pair
    print(json.dumps(out, indent=2, default=float))
    summary = [f'self-check {"PASSED" if check["passed"] else "FAILED"}']
    for name, r in results.items():
        o = r['ours']
        key = 'dense' if 'dense' in o else 'corners' if 'corners' in o else None
        if key:
            summary.append(f'{name}: ours EPE {o[key]["epe_mean"]:.2f} px')
    if args.random_weights:
        summary.append('(RANDOM WEIGHTS: meaningless)')
    print('; '.join(summary), file=sys.stderr)
    return 0 if check['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
