"""Metric visual odometry from dense stereo matches: PnP with covariance, and its chaining.

Conventions (as ``pose.py``): frames are camera optical frames (x right, y down, z forward);
a relative pose ``(R, t)`` of camera A in camera B maps ``p_B = R p_A + t``; 6x6 covariances
are REP 103, row-major over ``(x, y, z, rot X, rot Y, rot Z)`` with rotations about the fixed
axes of the frame the pose is expressed in: ``R = Exp(d_theta) R_hat``, ``t = t_hat + d_t``.

:func:`estimate_metric_pose`: A's points in 3D from its stereo depth, their matches in B in 2D;
robust PnP (OpenCV USAC, P3P samples) -- or, when a predicted pose (:class:`MotionModel`)
explains most matches, that prediction -- then Gauss-Newton over the pose *and* every point's
inverse depth on the reprojection error whitened by each match's predicted covariance plus the
disparity error whitened by its stereo match's x-variance (the depth uncertainty, in the
space where it is Gaussian): first robustly (Cauchy) on the matches near the RANSAC model to
re-select the inliers, then by least squares on those. The pose covariance is the inverse of
the depth-reduced (Schur complement) Gauss-Newton Hessian, scaled up by the a-posteriori
variance factor when that exceeds 1 (the residuals say the predicted covariances are
optimistic), never down. The Jacobians are analytic (``bench/bench_pose.py`` measures time
and accuracy).

:func:`compose` and :func:`twist`: poses chained with first-order covariance propagation and
the velocity over a step (``tracking.py`` chains keyframes with them).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from romav2_core.pose import (GN_COARSE_DECREMENT_TOL, GN_DECREMENT_TOL, MIN_EIGENVALUE,
                              RANSAC_CONFIDENCE, RANSAC_MAX_ITERS, PoseEstimate, cauchy_scale,
                              irls_sqrt_weights, robust_cost)

#: Fewest 3D-2D matches accepted (P3P plus a margin for RANSAC).
MIN_POINTS = 12
#: The fit that re-selects the inliers uses the matches within this many inlier thresholds of
#: the initial model (robustly): the noisy depths spread the inliers' reprojection errors, and
#: a fit on only those within the threshold would stay biased toward the model that chose them.
SELECTION_BAND = 3.0
#: A predicted pose replaces RANSAC when at least this share of the usable matches lie within
#: SELECTION_BAND thresholds of it: it is then in the basin of the dominant motion, where
#: RANSAC's model would be (RANSAC with P3P samples costs 2-5 ms a frame on noisy depths).
PRIOR_MIN_SHARE = 0.5


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _exp(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3))[0]


def _log(R: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(R, np.float64))[0].ravel()


def _spd(cov: np.ndarray) -> np.ndarray:
    cov = (cov + cov.T) / 2
    w, V = np.linalg.eigh(cov)
    return (V * np.maximum(w, MIN_EIGENVALUE)) @ V.T


def backproject(points_px: np.ndarray, inverse_depth: np.ndarray, K: np.ndarray) -> tuple:
    """``[N x 2]`` OpenCV px with inverse depths ``[N]`` (1/m) -> 3D points ``[N x 3]`` and
    the rays ``[N x 3]`` (``X = ray / rho``, ray z = 1) of an undistorted camera ``K``."""
    h = np.c_[points_px, np.ones(len(points_px))]
    rays = h @ np.linalg.inv(K).T
    return rays / inverse_depth[:, None], rays


def _projection(Y: np.ndarray, K: np.ndarray) -> tuple:
    """Pixels ``[N x 2]`` of camera-frame points ``Y`` ``[N x 3]`` and the rows of the
    projection's Jacobian: ``du/dY = (fx/z, 0, -fx x/z)``, ``dv/dY = (0, fy/z, -fy y/z)``
    with ``(x, y) = (X/z, Y/z)``, returned as ``(fx/z, fy/z, x, y)`` ``[N]`` each."""
    inv_z = 1 / Y[:, 2]
    x, y = Y[:, 0] * inv_z, Y[:, 1] * inv_z
    fx, fy = K[0, 0], K[1, 1]
    px = np.stack([fx * x + K[0, 2], fy * y + K[1, 2]], axis=1)
    return px, (fx * inv_z, fy * inv_z, x, y)


def _whitening(cov: np.ndarray) -> tuple:
    """``[N x 2 x 2]`` covariances (px^2) -> the entries ``(w00, w10, w11)`` ``[N]`` each of
    the lower-triangular ``W = L^-1``, ``L L^T = cov`` (Cholesky, closed form)."""
    a = np.sqrt(cov[:, 0, 0] + 1e-12)
    b = cov[:, 1, 0] / a
    c = np.sqrt(cov[:, 1, 1] + 1e-12 - b * b)
    return 1 / a, -b / (a * c), 1 / c


class _StereoPnP:
    """Pose (``R``, ``t``) and one inverse depth per point, jointly: the whitened
    reprojection error in B and the disparity error of A's stereo measurement.

    Residuals of point i: ``W_i (pi(R ray_i / rho_i + t) - x_i)`` (2, ``W = L^-1``, ``L L^T``
    its match covariance) and ``(d_i - f T rho_i) / sigma_d_i`` (1). The depths are
    eliminated from the normal equations (Schur complement), so each step and the pose's
    covariance account for the depth uncertainty exactly to first order, without weights that
    depend on the noisy depths themselves (which would bias the scale). The pose offset is
    ``(d_t, d_theta)``: ``t + d_t``, ``Exp(d_theta) R``.
    """

    def __init__(self, rays, obs, W, disparity, sigma_d, fT, K):
        self.rays, self.obs, self.W, self.d, self.sigma_d, self.fT, self.K = \
            rays, obs, W, disparity, sigma_d, fT, K

    def residuals(self, R, t, rho):
        """Whitened reprojection residuals ``[2N]`` (all u rows, then all v rows), disparity
        residuals ``[N]``, the points in B ``[N x 3]`` and the projection terms of
        :func:`_projection`."""
        Y = (self.rays / rho[:, None]) @ R.T + t
        px, proj = _projection(Y, self.K)
        e = px - self.obs
        w00, w10, w11 = self.W
        r = np.concatenate([w00 * e[:, 0], w10 * e[:, 0] + w11 * e[:, 1]])
        r[np.tile(Y[:, 2] <= 0, 2)] = 1e3    # behind the camera: a large, finite penalty
        return r, (self.d - self.fT * rho) / self.sigma_d, Y, proj

    @staticmethod
    def cost(residuals, scale: Optional[float] = None) -> float:
        """``sum r^2`` over all residuals, or with a ``scale`` their Cauchy loss."""
        return robust_cost(np.concatenate(residuals[:2]), scale)

    def normal_equations(self, R, t, rho, residuals, scale: Optional[float] = None):
        """Reduced (pose-only) system ``S dp = -b`` at ``residuals`` (of this pose) and what
        back-substitution needs: ``(S, b, Hpr [N x 6], Hrr [N], gr [N])``; with a Cauchy
        ``scale`` the iteratively-reweighted system."""
        r, rd, Y, (fx_z, fy_z, x, y) = residuals
        w00, w10, w11 = self.W
        n = len(x)
        # W dpi/dY, row u = w00 (fx/z, 0, -fx x/z), row v = w10 (fx/z, 0, -fx x/z)
        # + w11 (0, fy/z, -fy y/z); d Y = d_t + d_theta x (R X): the rotation columns of a row
        # a are (R X) x a. J: [2N x 6] over (d_t, d_theta), the u rows then the v rows.
        J = np.empty((2 * n, 6))
        u, v = J[:n], J[n:]
        u[:, 0] = w00 * fx_z
        u[:, 1] = 0
        u[:, 2] = -u[:, 0] * x
        v[:, 0] = w10 * fx_z
        v[:, 1] = w11 * fy_z
        v[:, 2] = -v[:, 0] * x - v[:, 1] * y
        rx, ry, rz = (Y - t).T
        for rows in (u, v):
            a0, a1, a2 = rows[:, 0], rows[:, 1], rows[:, 2]
            rows[:, 3] = ry * a2 - rz * a1
            rows[:, 4] = rz * a0 - rx * a2
            rows[:, 5] = rx * a1 - ry * a0
        # d Y / d rho = -R ray / rho^2 = -R X / rho
        j_rho = np.concatenate([u[:, 0] * rx + u[:, 2] * rz,
                                v[:, 0] * rx + v[:, 1] * ry + v[:, 2] * rz]) / -np.tile(rho, 2)
        Jd = -self.fT / self.sigma_d                                          # [N]
        if scale is not None:            # rows times the square roots of their weights
            sw, sw_d = irls_sqrt_weights(r, scale), irls_sqrt_weights(rd, scale)
            J, j_rho, r = J * sw[:, None], j_rho * sw, r * sw
            Jd, rd = Jd * sw_d, rd * sw_d
        Hpp = J.T @ J
        Jj = J * j_rho[:, None]
        Hpr = Jj[:n] + Jj[n:]                                                 # [N x 6]
        jr = j_rho * r
        Hrr = j_rho[:n] ** 2 + j_rho[n:] ** 2 + Jd * Jd
        gr = jr[:n] + jr[n:] + Jd * rd
        S = Hpp - (Hpr / Hrr[:, None]).T @ Hpr
        b = J.T @ r - Hpr.T @ (gr / Hrr)
        return S, b, Hpr, Hrr, gr

    def refine(self, R, t, rho, tol=GN_DECREMENT_TOL, robust=False, max_iterations=10):
        """Gauss-Newton until the decrease that the pose's step predicts (the depths
        eliminated) is below ``tol``; a step is kept only if it lowers the cost. ``robust``:
        the Cauchy loss of :func:`cauchy_scale` (fixed at the start) instead of the squares.
        Returns ``(R, t, rho, cost, S)``, ``S`` the reduced Hessian at the result."""
        res = self.residuals(R, t, rho)
        scale = cauchy_scale(np.concatenate(res[:2])) if robust else None
        cost = self.cost(res, scale)
        S, b, Hpr, Hrr, gr = self.normal_equations(R, t, rho, res, scale)
        for _ in range(max_iterations):
            dp = -np.linalg.solve(S + 1e-12 * np.eye(6), b)
            if -b @ dp < tol:       # the decrease the pose's own (depth-reduced) step predicts
                break
            drho = -(gr + Hpr @ dp) / Hrr
            R_new, t_new = _exp(dp[3:]) @ R, t + dp[:3]
            rho_new = np.maximum(rho + drho, 1e-6)
            res_new = self.residuals(R_new, t_new, rho_new)
            cost_new = self.cost(res_new, scale)
            if not cost_new < cost:
                break
            R, t, rho, cost = R_new, t_new, rho_new, cost_new
            S, b, Hpr, Hrr, gr = self.normal_equations(R, t, rho, res_new, scale)
        return R, t, rho, cost, S


def _ransac_pnp(X, points_b, K_b, threshold_px, confidence, max_iters):
    """Robust PnP of 3D points ``X`` ``[N x 3]`` (A's frame) and their pixels in B: OpenCV's
    USAC (P3P samples, MSAC score) without its local optimisation and polishing, which the
    refinement does; ``(R, t, inliers [N] bool)`` or None."""
    params = cv2.UsacParams()
    params.threshold, params.confidence, params.maxIterations = \
        threshold_px, confidence, max_iters
    params.score = cv2.SCORE_METHOD_MSAC
    params.loMethod = cv2.LOCAL_OPTIM_NULL
    params.final_polisher = cv2.NONE_POLISHER
    ok, _, rvec, tvec, idx = cv2.solvePnPRansac(X, points_b, K_b.copy(), None, params=params)
    if not ok or idx is None:
        return None
    inliers = np.zeros(len(X), bool)
    inliers[idx.ravel()] = True
    return _exp(rvec), tvec.ravel(), inliers


def estimate_metric_pose(points_a, disparity_a, var_disparity_a, points_b, cov_b, K_a, K_b,
                         fT: float, ransac_threshold_px: float = 2.0,
                         confidence: float = RANSAC_CONFIDENCE,
                         max_iters: int = RANSAC_MAX_ITERS,
                         prior: Optional[tuple] = None) -> Optional[PoseEstimate]:
    """Metric pose of camera A in camera B from A's stereo disparities and matches A -> B.

    ``points_a`` ``[N x 2]``: OpenCV px of A (the left image of a rectified pair), with their
    disparities ``disparity_a`` ``[N]`` (px, the DisparityImage convention: ``Z = fT / d``)
    and its variance ``var_disparity_a`` ``[N]`` (px^2); ``points_b`` ``[N x 2]``: their
    matches in B, covariances ``cov_b`` ``[N x 2 x 2]`` (px^2; non-finite or not positive
    definite -> 1 px^2).
    ``K_a``, ``K_b``: rectified camera matrices; ``fT``: focal length x baseline (px m).
    Returns None with fewer than :data:`MIN_POINTS` usable matches or when no model is found.
    """
    points_a = np.asarray(points_a, np.float64).reshape(-1, 2)
    points_b = np.asarray(points_b, np.float64).reshape(-1, 2)
    d = np.asarray(disparity_a, np.float64).ravel()
    var_d = np.asarray(var_disparity_a, np.float64).ravel()
    cov = np.asarray(cov_b, np.float64).reshape(-1, 2, 2).copy()
    cov = (cov + cov.transpose(0, 2, 1)) / 2
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    bad_cov = ~np.isfinite(cov).all(axis=(1, 2)) | (cov[:, 0, 0] <= 0) | (det <= 0)
    cov[bad_cov] = np.eye(2)
    usable = np.isfinite(d) & (d > 0) & np.isfinite(var_d) & (var_d > 0) & \
        np.isfinite(points_b).all(axis=1)
    if usable.sum() < MIN_POINTS:
        return None
    points_a, points_b, d, var_d, cov = (a[usable] for a in (points_a, points_b, d, var_d, cov))
    n = len(points_a)
    K_a = np.asarray(K_a, np.float64).reshape(3, 3)
    K_b = np.asarray(K_b, np.float64).reshape(3, 3)
    rho0 = d / fT
    X, rays = backproject(points_a, rho0, K_a)
    W, sigma_d = _whitening(cov), np.sqrt(var_d)

    def reprojection_px(R, t, rho):
        px, _ = _projection((rays / rho[:, None]) @ R.T + t, K_b)
        return np.linalg.norm(px - points_b, axis=1)

    # Each fit starts every point's inverse depth where the fit before left it (its stereo
    # measurement before any): a fit from the stereo depths spends its first steps moving
    # the depths back to where the previous fit had them.
    rho_start = rho0.copy()

    def fit(mask, R, t, tol=GN_DECREMENT_TOL, robust=False):
        problem = _StereoPnP(rays[mask], points_b[mask], tuple(w[mask] for w in W), d[mask],
                             sigma_d[mask], fT, K_b)
        R, t, rho, cost, S = problem.refine(R, t, rho_start[mask], tol, robust)
        rho_start[mask] = rho
        return R, t, rho_start, cost, S

    band = SELECTION_BAND * ransac_threshold_px
    seeded_by = 'ransac'
    if prior is not None:
        R, t = (np.asarray(a, np.float64) for a in prior)
        near = reprojection_px(R, t, rho0) < band
        if near.sum() >= max(MIN_POINTS, PRIOR_MIN_SHARE * n):
            # a robust fit from the prediction first: the Cauchy scale of the fit below comes
            # from its starting model's residuals, which a prediction's error would inflate
            R, t, _, _, _ = fit(near, R, t, GN_COARSE_DECREMENT_TOL, robust=True)
            seeded_by = 'prediction'
    if seeded_by == 'ransac':
        found = _ransac_pnp(X, points_b, K_b, ransac_threshold_px, confidence, max_iters)
        if found is None or found[2].sum() < MIN_POINTS:
            return None
        R, t, inliers = found
    near = reprojection_px(R, t, rho0) < band
    if seeded_by == 'prediction':
        inliers = near

    # A robust fit on the matches near the initial model (SELECTION_BAND) good enough to
    # re-select the inliers, then the least-squares fit on those (the local-optimisation step
    # of LO-RANSAC).
    R, t, _, _, _ = fit(near, R, t, GN_COARSE_DECREMENT_TOL, robust=True)
    reselected = reprojection_px(R, t, rho0) < ransac_threshold_px
    if reselected.sum() >= MIN_POINTS:
        inliers = reselected
    R, t, rho, cost, S = fit(inliers, R, t)
    m = int(inliers.sum())
    dof = max(3 * m - 6 - m, 1)            # 3 residuals a point, 6 pose + 1 depth parameters
    covariance = np.linalg.pinv(S) * max(1.0, cost / dof)
    return PoseEstimate(R=R, t=t, covariance=_spd(covariance), inliers=inliers,
                        num_matches=n, num_inliers=m, mean_epipolar_error=float('nan'),
                        scale_observable=True,
                        mean_reprojection_error=float(reprojection_px(R, t, rho)[inliers]
                                                      .mean()),
                        seeded_by=seeded_by)


class MotionModel:
    """Constant-velocity prediction of a frame's pose against its keyframe, in the
    convention of :func:`estimate_metric_pose` (``p_keyframe = R p_frame + t``): from the last
    two poses of frames against the same keyframe ``T_k`` (``T_{k-1}``), ``T_k T_{k-1}^-1
    T_k``; from one, that pose; None before. It assumes an even frame rate: a dropped frame
    is a larger step, which the band check of :func:`estimate_metric_pose` catches."""

    def __init__(self):
        self._poses: list[tuple] = []          # (keyframe id, 4x4 T), the last two

    def reset(self) -> None:
        self._poses = []

    def add(self, keyframe_id, R, t) -> None:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        self._poses = [p for p in self._poses[-1:] if p[0] == keyframe_id] + [(keyframe_id, T)]

    def predict(self, keyframe_id) -> Optional[tuple]:
        same = [T for k, T in self._poses if k == keyframe_id]
        if not same:
            return None
        T = same[-1] if len(same) == 1 else same[1] @ np.linalg.inv(same[0]) @ same[1]
        return T[:3, :3], T[:3, 3]


# ------------------------------------------------------------------ chaining
def compose(R1, p1, cov1, R2, t2, cov2) -> tuple:
    """Pose 2 (expressed in frame 1) after pose 1 (in the world): ``(R1 R2, p1 + R1 t2)``
    and its covariance, first order, the two independent (REP 103 fixed world axes)."""
    J1 = np.eye(6)
    J1[:3, 3:] = -_skew(R1 @ t2)
    J2 = np.kron(np.eye(2), R1)
    return R1 @ R2, p1 + R1 @ t2, _spd(J1 @ cov1 @ J1.T + J2 @ cov2 @ J2.T)


def _left_jacobian_inverse(theta: np.ndarray) -> np.ndarray:
    a = float(np.linalg.norm(theta))
    S = _skew(theta)
    if a < 1e-8:
        return np.eye(3) - S / 2
    return np.eye(3) - S / 2 + (1 / a ** 2 - (1 + np.cos(a)) / (2 * a * np.sin(a))) * S @ S


def twist(R, t, cov, dt: float) -> tuple:
    """Velocity over a step ``(R, t)`` (pose of the new camera in the old frame) taking ``dt``
    seconds, in the *new* camera's frame (nav_msgs/Odometry: the child frame): linear
    ``R^T t / dt`` m/s, angular ``log(R) / dt`` rad/s (the rotation axis is the same in both
    frames), and its 6x6 covariance from the step's, first order."""
    theta = _log(R)
    v, w = R.T @ t / dt, theta / dt
    J = np.zeros((6, 6))
    J[:3, :3] = R.T / dt
    J[:3, 3:] = R.T @ _skew(t) / dt
    J[3:, 3:] = _left_jacobian_inverse(theta) / dt
    return v, w, _spd(J @ cov @ J.T)
