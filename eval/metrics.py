"""Accuracy metrics for dense warps, their certainty and covariance, and relative poses.

All positions are OpenCV pixels of image B; ``pred`` / ``gt`` warps are ``[H x W x 2]`` with
NaN where unknown; covariances ``[H x W x 2 x 2]`` in px^2 of B.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

PCK_THRESHOLDS = (1.0, 3.0, 5.0)
#: Mahalanobis^2 (2-D, chi-square with 2 dof) bounds of the k-sigma ellipses, k = 1, 2, 3, and
#: the probability a correctly specified Gaussian error falls inside: 1 - exp(-k^2 / 2).
SIGMA_ELLIPSES = {'1sigma': (1.0, 0.3935), '2sigma': (4.0, 0.8647), '3sigma': (9.0, 0.9889)}
#: Mahalanobis^2 bounds of the 68.27 / 95.45 / 99.73 % confidence regions in 2-D (the 1-D
#: "1/2/3 sigma" probabilities), and those probabilities.
CONFIDENCE_REGIONS = {'68.3%': (2.30, 0.6827), '95.4%': (6.18, 0.9545), '99.7%': (11.83, 0.9973)}


def end_point_error(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """Per-pixel error vectors and norms where the GT is known.

    Returns ``(err [N x 2], epe [N], has_pred [N])`` over GT-valid pixels (flattened); rows
    without a prediction are NaN and ``has_pred`` False.
    """
    gt_valid = np.isfinite(gt).all(-1)
    e = (pred[gt_valid] - gt[gt_valid]).astype(np.float64)
    has_pred = np.isfinite(e).all(-1)
    return e, np.linalg.norm(e, axis=-1), has_pred


def epe_summary(epe: np.ndarray, has_pred: Optional[np.ndarray] = None) -> dict:
    """Mean / median EPE and the share within 1/3/5 px over the predicted GT pixels;
    ``density`` = predicted share of the GT pixels; ``pck_all@k`` counts missing as failures."""
    if has_pred is None:
        has_pred = np.isfinite(epe)
    n = len(epe)
    e = epe[has_pred]
    out = {'n_gt': int(n), 'density': float(has_pred.mean()) if n else float('nan'),
           'epe_mean': float(e.mean()) if len(e) else float('nan'),
           'epe_median': float(np.median(e)) if len(e) else float('nan')}
    for k in PCK_THRESHOLDS:
        out[f'pck@{k:g}'] = float((e <= k).mean()) if len(e) else float('nan')
        out[f'pck_all@{k:g}'] = float((e <= k).sum() / n) if n else float('nan')
    return out


def certainty_calibration(epe: np.ndarray, certainty: np.ndarray, bins: int = 5) -> list[dict]:
    """EPE by certainty quantile bin (lowest certainty first): a useful certainty has falling
    error with rising certainty."""
    ok = np.isfinite(epe) & np.isfinite(certainty)
    epe, certainty = epe[ok], certainty[ok]
    if len(epe) == 0:
        return []
    order = np.argsort(certainty, kind='stable')
    out = []
    for k, idx in enumerate(np.array_split(order, bins)):
        if len(idx) == 0:
            continue
        c, e = certainty[idx], epe[idx]
        out.append({'quantile': f'{k / bins:.2f}-{(k + 1) / bins:.2f}',
                    'certainty_min': float(c.min()), 'certainty_max': float(c.max()),
                    'certainty_mean': float(c.mean()), 'epe_mean': float(e.mean()),
                    'epe_median': float(np.median(e)), 'pck@3': float((e <= 3).mean()),
                    'n': int(len(idx))})
    return out


def mahalanobis_sq(err: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``e^T Sigma^-1 e`` per row for ``err [N x 2]``, ``cov [N x 2 x 2]`` (NaN if singular)."""
    a, b, c, d = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 0], cov[:, 1, 1]
    det = a * d - b * c
    with np.errstate(invalid='ignore', divide='ignore'):
        x, y = err[:, 0], err[:, 1]
        m = (d * x * x - (b + c) * x * y + a * y * y) / det
    m[~(det > 0)] = np.nan
    return m


def covariance_calibration(err: np.ndarray, cov: np.ndarray) -> dict:
    """Share of the errors inside the predicted 1/2/3-sigma ellipses (expected 39.3 / 86.5 /
    98.9 % for a correctly specified Gaussian) and inside the 68.3/95.4/99.7 % confidence
    regions (Mahalanobis^2 <= 2.30 / 6.18 / 11.83), with the expected values beside them."""
    m = mahalanobis_sq(np.asarray(err, np.float64), np.asarray(cov, np.float64))
    m = m[np.isfinite(m)]
    out = {'n': int(len(m)), 'mahalanobis_sq_median': float(np.median(m)) if len(m) else
           float('nan'), 'expected_mahalanobis_sq_median': 1.3863}
    for name, (bound, p) in {**SIGMA_ELLIPSES, **CONFIDENCE_REGIONS}.items():
        out[f'inside_{name}'] = float((m <= bound).mean()) if len(m) else float('nan')
        out[f'expected_{name}'] = p
    return out


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    cos = (np.trace(np.asarray(R_est).T @ np.asarray(R_gt)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def direction_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle between translation directions (sign matters: the pose is cheirality-checked)."""
    a = np.asarray(t_est, np.float64).ravel()
    b = np.asarray(t_gt, np.float64).ravel()
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _undistort_px(points, K, D):
    """Distorted pixels -> ideal pinhole pixels of the same K (for poselib's PINHOLE model)."""
    import cv2
    if D is None or not np.any(D):
        return np.asarray(points, np.float64)
    pts = np.asarray(points, np.float64).reshape(-1, 1, 2)
    return cv2.undistortPoints(pts, K, np.asarray(D, np.float64), P=K).reshape(-1, 2)


def poselib_available() -> bool:
    try:
        import poselib  # noqa: F401
        return True
    except ImportError:
        return False


def estimate_pose(points_A, points_B, K_A, K_B, D_A=None, D_B=None, solver: str = 'poselib',
                  threshold_px: float = 1.0, cov_B=None) -> Optional[dict]:
    """Relative pose of A in B (``p_B = R p_A + t``) from pixel matches.

    ``solver='poselib'``: poselib's LO-RANSAC + refinement (reference solver);
    ``solver='node'``: ``romav2_core.pose.estimate_relative_pose`` (what the node publishes).
    Returns ``{'R', 't', 'num_inliers'}`` or None when no pose is found.
    """
    points_A = np.asarray(points_A, np.float64)
    points_B = np.asarray(points_B, np.float64)
    if len(points_A) < 8:
        return None
    if solver == 'node':
        from romav2_core.pose import estimate_relative_pose
        est = estimate_relative_pose(points_A, points_B, K_A, K_B, D_A, D_B, cov_b=cov_B,
                                     ransac_threshold_px=threshold_px)
        if est is None:
            return None
        return {'R': est.R, 't': est.t, 'num_inliers': est.num_inliers}
    if solver != 'poselib':
        raise ValueError(f'unknown pose solver {solver!r}')
    import poselib
    pa, pb = _undistort_px(points_A, K_A, D_A), _undistort_px(points_B, K_B, D_B)

    def cam(K):
        return {'model': 'PINHOLE', 'width': 0, 'height': 0,
                'params': [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}
    pose, info = poselib.estimate_relative_pose(pa, pb, cam(K_A), cam(K_B),
                                                {'max_epipolar_error': threshold_px})
    if info.get('num_inliers', 0) < 5:
        return None
    return {'R': np.asarray(pose.R), 't': np.asarray(pose.t) / np.linalg.norm(pose.t),
            'num_inliers': int(info['num_inliers'])}


def pose_errors(est: Optional[dict], R_gt, t_gt) -> dict:
    if est is None:
        return {'rotation_deg': None, 'translation_direction_deg': None, 'failed': True}
    return {'rotation_deg': rotation_error_deg(est['R'], R_gt),
            'translation_direction_deg': direction_error_deg(est['t'], t_gt),
            'num_inliers': est['num_inliers'], 'failed': False}
