"""Metric visual odometry from dense stereo matches: PnP with covariance, and its chaining.

Conventions (as ``pose.py``): frames are camera optical frames (x right, y down, z forward);
a relative pose ``(R, t)`` of camera A in camera B maps ``p_B = R p_A + t``; 6x6 covariances
are REP 103, row-major over ``(x, y, z, rot X, rot Y, rot Z)`` with rotations about the fixed
axes of the frame the pose is expressed in: ``R = Exp(d_theta) R_hat``, ``t = t_hat + d_t``.

:func:`estimate_metric_pose`: A's points in 3D from its stereo depth, their matches in B in 2D;
robust PnP (OpenCV RANSAC), then Gauss-Newton over the pose *and* every point's inverse
depth on the reprojection error whitened by each match's predicted covariance plus the
disparity error whitened by its stereo match's x-variance (the depth uncertainty, in the
space where it is Gaussian), with one inlier re-selection. The pose covariance is the inverse
of the depth-reduced (Schur complement) Gauss-Newton Hessian, scaled up by the a-posteriori
variance factor when that exceeds 1 (the residuals say the predicted covariances are
optimistic), never down.

:class:`Odometry`: the chained pose of the camera in a fixed odometry frame (the camera's pose
at the start), with first-order covariance propagation, and the twist over each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from romav2_core.pose import MIN_EIGENVALUE, PoseEstimate

#: Fewest 3D-2D matches accepted (P3P plus a margin for RANSAC).
MIN_POINTS = 12


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
    """Pixels ``[N x 2]`` of camera-frame points ``Y`` and the Jacobian ``[N x 2 x 3]``."""
    z = Y[:, 2]
    fx, fy = K[0, 0], K[1, 1]
    px = np.c_[fx * Y[:, 0] / z + K[0, 2], fy * Y[:, 1] / z + K[1, 2]]
    J = np.zeros((len(Y), 2, 3))
    J[:, 0, 0] = fx / z
    J[:, 0, 2] = -fx * Y[:, 0] / z ** 2
    J[:, 1, 1] = fy / z
    J[:, 1, 2] = -fy * Y[:, 1] / z ** 2
    return px, J


class _StereoPnP:
    """Pose (``R``, ``t``) and one inverse depth per point, jointly: the whitened
    reprojection error in B and the disparity error of A's stereo measurement.

    Residuals of point i: ``L_i^-1 (pi(R ray_i / rho_i + t) - x_i)`` (2, ``L L^T`` = its match
    covariance) and ``(d_i - f T rho_i) / sigma_d_i`` (1). The depths are eliminated from the
    normal equations (Schur complement), so each step and the pose's covariance account for
    the depth uncertainty exactly to first order, without weights that depend on the noisy
    depths themselves (which would bias the scale).
    """

    def __init__(self, rays, obs, W, disparity, sigma_d, fT, K):
        self.rays, self.obs, self.W, self.d, self.sigma_d, self.fT, self.K = \
            rays, obs, W, disparity, sigma_d, fT, K

    def residuals(self, R, t, rho):
        Y = (self.rays / rho[:, None]) @ R.T + t
        px, J = _projection(Y, self.K)
        r = np.einsum('nij,nj->ni', self.W, px - self.obs)
        r[Y[:, 2] <= 0] = 1e3            # behind the camera: a large, finite penalty
        return r, (self.d - self.fT * rho) / self.sigma_d, Y, J

    def cost(self, R, t, rho) -> float:
        r, rd, _, _ = self.residuals(R, t, rho)
        return float(np.sum(r * r) + rd @ rd)

    def normal_equations(self, R, t, rho):
        """Reduced (pose-only) system ``S dp = -b`` and what back-substitution needs."""
        r, rd, Y, Jpi = self.residuals(R, t, rho)
        WJ = np.einsum('nij,njk->nik', self.W, Jpi)                       # [N x 2 x 3]
        Jp = np.concatenate([WJ, -np.einsum('nij,njk->nik', WJ, _skew_batch(Y - t))], axis=2)
        Jrho = -np.einsum('nij,nj->ni', WJ, (self.rays / rho[:, None] ** 2) @ R.T)  # [N x 2]
        Jd = -self.fT / self.sigma_d                                      # [N]
        Hpp = np.einsum('nij,nik->jk', Jp, Jp)
        Hpr = np.einsum('nij,ni->nj', Jp, Jrho)                           # [N x 6]
        Hrr = np.einsum('ni,ni->n', Jrho, Jrho) + Jd * Jd
        gp = np.einsum('nij,ni->j', Jp, r)
        gr = np.einsum('ni,ni->n', Jrho, r) + Jd * rd
        S = Hpp - (Hpr / Hrr[:, None]).T @ Hpr
        b = gp - (Hpr * (gr / Hrr)[:, None]).sum(axis=0)
        return S, b, Hpr, Hrr, gr

    def refine(self, R, t, rho, iterations=10):
        cost = self.cost(R, t, rho)
        for _ in range(iterations):
            S, b, Hpr, Hrr, gr = self.normal_equations(R, t, rho)
            dp = -np.linalg.solve(S + 1e-12 * np.eye(6), b)
            drho = -(gr + Hpr @ dp) / Hrr
            R_new, t_new = _exp(dp[3:]) @ R, t + dp[:3]
            rho_new = np.maximum(rho + drho, 1e-6)
            cost_new = self.cost(R_new, t_new, rho_new)
            if not cost_new < cost:
                break
            done = cost - cost_new < 1e-10 * cost
            R, t, rho, cost = R_new, t_new, rho_new, cost_new
            if done:
                break
        return R, t, rho, cost


def _skew_batch(v: np.ndarray) -> np.ndarray:
    """``[N x 3]`` -> ``[N x 3 x 3]`` cross-product matrices."""
    z = np.zeros(len(v))
    return np.stack([np.stack([z, -v[:, 2], v[:, 1]], -1), np.stack([v[:, 2], z, -v[:, 0]], -1),
                     np.stack([-v[:, 1], v[:, 0], z], -1)], axis=1)


def _whitening(cov: np.ndarray) -> np.ndarray:
    """``[N x 2 x 2]`` L^-1 with ``L L^T = cov`` (px^2)."""
    return np.linalg.inv(np.linalg.cholesky(cov + 1e-12 * np.eye(2)))


def estimate_metric_pose(points_a, disparity_a, var_disparity_a, points_b, cov_b, K_a, K_b,
                         fT: float, ransac_threshold_px: float = 2.0,
                         confidence: float = 0.9999, max_iters: int = 1000
                         ) -> Optional[PoseEstimate]:
    """Metric pose of camera A in camera B from A's stereo disparities and matches A -> B.

    ``points_a`` ``[N x 2]``: OpenCV px of A (the left image of a rectified pair), with their
    disparities ``disparity_a`` ``[N]`` (px, the DisparityImage convention: ``Z = fT / d``)
    and its variance ``var_disparity_a`` ``[N]`` (px^2); ``points_b`` ``[N x 2]``: their
    matches in B, covariances ``cov_b`` ``[N x 2 x 2]`` (px^2; non-finite -> 1 px^2).
    ``K_a``, ``K_b``: rectified camera matrices; ``fT``: focal length x baseline (px m).
    Returns None with fewer than :data:`MIN_POINTS` usable matches or when no model is found.
    """
    points_a = np.asarray(points_a, np.float64).reshape(-1, 2)
    points_b = np.asarray(points_b, np.float64).reshape(-1, 2)
    d = np.asarray(disparity_a, np.float64).ravel()
    var_d = np.asarray(var_disparity_a, np.float64).ravel()
    cov = np.asarray(cov_b, np.float64).reshape(-1, 2, 2).copy()
    bad_cov = ~np.isfinite(cov).all(axis=(1, 2)) | (cov[:, 0, 0] <= 0) | (cov[:, 1, 1] <= 0)
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
    ok, rvec, tvec, idx = cv2.solvePnPRansac(
        X, points_b, K_b, None, iterationsCount=max_iters, reprojectionError=ransac_threshold_px,
        confidence=confidence, flags=cv2.SOLVEPNP_EPNP)
    if not ok or idx is None or len(idx) < MIN_POINTS:
        return None
    R, t = _exp(rvec), tvec.ravel()
    inliers = np.zeros(n, bool)
    inliers[idx.ravel()] = True
    W, sigma_d = _whitening(cov), np.sqrt(var_d)

    def fit(mask, R, t):
        problem = _StereoPnP(rays[mask], points_b[mask], W[mask], d[mask], sigma_d[mask], fT,
                             K_b)
        R, t, rho, cost = problem.refine(R, t, rho0[mask])
        return problem, R, t, rho, cost

    def reprojection_px(R, t, rho):
        px, _ = _projection((rays / rho[:, None]) @ R.T + t, K_b)
        return np.linalg.norm(px - points_b, axis=1)

    problem, R, t, rho, cost = fit(inliers, R, t)
    reselected = reprojection_px(R, t, rho0) < ransac_threshold_px
    if reselected.sum() >= MIN_POINTS and (reselected != inliers).any():
        inliers = reselected
        problem, R, t, rho, cost = fit(inliers, R, t)
    S = problem.normal_equations(R, t, rho)[0]
    m = int(inliers.sum())
    dof = max(3 * m - 6 - m, 1)            # 3 residuals a point, 6 pose + 1 depth parameters
    covariance = np.linalg.pinv(S) * max(1.0, cost / dof)
    rho_all = rho0.copy()
    rho_all[inliers] = rho
    return PoseEstimate(R=R, t=t, covariance=_spd(covariance), inliers=inliers,
                        num_matches=n, num_inliers=m, mean_epipolar_error=float('nan'),
                        scale_observable=True,
                        mean_reprojection_error=float(reprojection_px(R, t, rho_all)[inliers]
                                                      .mean()))


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


@dataclass
class OdometryStep:
    """The odometry after one frame: pose of the camera in the odometry frame, twist."""

    R: np.ndarray              # [3 x 3] camera orientation in the odometry frame
    p: np.ndarray              # [3] camera position, m
    covariance: np.ndarray     # [6 x 6] REP 103, odometry-frame axes
    linear: np.ndarray         # [3] m/s in the camera frame
    angular: np.ndarray        # [3] rad/s in the camera frame
    twist_covariance: np.ndarray   # [6 x 6]
    segment: int               # 0, 1, ... a new one after every reset


class Odometry:
    """The camera's pose in the odometry frame (its pose when the odometry started), chained
    from relative poses. :meth:`reset` starts a new segment: the next step continues from the
    last pose (the odometry frame stays continuous, REP 105), the motion while tracking was
    lost is not integrated (it is unknown), and nothing failed is ever chained."""

    def __init__(self):
        self.R, self.p, self.covariance = np.eye(3), np.zeros(3), np.zeros((6, 6))
        self.segment = 0
        self._broken = False

    def reset(self) -> None:
        self._broken = True

    def step(self, rel: PoseEstimate, dt: float) -> OdometryStep:
        """Chain ``rel`` (pose of the camera now in its frame ``dt`` s before)."""
        if self._broken:
            self.segment += 1
            self._broken = False
        self.R, self.p, self.covariance = compose(self.R, self.p, self.covariance, rel.R,
                                                  rel.t, rel.covariance)
        v, w, cov_twist = twist(rel.R, rel.t, rel.covariance, dt)
        return OdometryStep(R=self.R.copy(), p=self.p.copy(), covariance=self.covariance.copy(),
                            linear=v, angular=w, twist_covariance=cov_twist,
                            segment=self.segment)
