"""Relative camera pose from point matches, with a covariance (pure numpy / OpenCV, no ROS).

Conventions
-----------
* Points are OpenCV pixels (centres at integers; ``geometry.py``) of the full input images.
* The result is the pose of camera A expressed in camera B's optical frame (z forward, x right,
  y down): a point ``p_A`` in A's frame maps to ``p_B = R p_A + t``. So ``t`` is the position of
  A's optical centre in B and ``R`` A's orientation in B. Only the direction of ``t`` is
  observable from two views: ``|t| = 1``.
* The 6x6 covariance is over ``(x, y, z, rot X, rot Y, rot Z)`` with rotations about B's fixed
  axes (REP 103): ``R = Exp(d_theta) R_hat``. The estimate has 5 degrees of freedom (rotation 3,
  translation direction 2); the sixth direction, the translation scale ``t_hat``, gets the
  variance :data:`UNOBSERVABLE_VARIANCE` (m^2) so consumers see it as unknown, never as exact.

Estimation: undistort to normalised camera coordinates with the CameraInfo distortion model,
robust essential matrix (OpenCV USAC MAGSAC++), cheirality (``recoverPose``), then a few
Gauss-Newton steps on the covariance-weighted Sampson error of the inliers, whose inverse
Hessian is the 5-DoF covariance.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from romav2_core.camera import DISTORTION_MODELS
#: Variance (m^2) put along the unobservable translation scale direction.
UNOBSERVABLE_VARIANCE = 1e6
#: Smallest eigenvalue kept in the returned covariance (keeps it positive definite).
MIN_EIGENVALUE = 1e-12
#: Fewest matches the estimator accepts (the 5-point solver plus a margin for RANSAC).
MIN_MATCHES = 8


@dataclass
class PoseEstimate:
    """Relative pose of camera A in camera B's frame (see the module docstring)."""

    R: np.ndarray                 # [3 x 3] rotation A -> B
    t: np.ndarray                 # [3] unit translation direction, A's centre in B
    covariance: np.ndarray        # [6 x 6] over (x, y, z, rot X, rot Y, rot Z), SPD
    inliers: np.ndarray           # [N] bool, matches consistent with the model
    num_matches: int
    num_inliers: int
    mean_epipolar_error: float    # mean Sampson distance of the inliers, px (mean focal length)
    scale_observable: bool = False
    #: Metric (PnP) poses: mean reprojection error of the inliers in B, px; NaN otherwise.
    mean_reprojection_error: float = float('nan')

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        return rotation_to_quaternion(self.R)

    def in_camera_frames(self, R_rect_a: np.ndarray, R_rect_b: np.ndarray) -> 'PoseEstimate':
        """This pose, estimated between two *rectified* frames, between the cameras' optical
        frames. CameraInfo's ``R`` maps an optical frame into its rectified frame
        (``p_rect = R p_cam``), so ``p_B = R_b^T R R_a p_A + R_b^T t``; a rotation
        perturbation ``d_theta`` about B's rectified axes is ``R_b^T d_theta`` about B's
        optical axes, hence the covariance ``M C M^T`` with ``M = diag(R_b^T, R_b^T)``."""
        Rb_t = np.asarray(R_rect_b, np.float64).T
        M = np.kron(np.eye(2), Rb_t)
        return dataclasses.replace(
            self, R=Rb_t @ self.R @ np.asarray(R_rect_a, np.float64), t=Rb_t @ self.t,
            covariance=M @ self.covariance @ M.T)


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation to a unit quaternion ``(x, y, z, w)`` with ``w >= 0`` (ROS order)."""
    rvec = cv2.Rodrigues(np.asarray(R, np.float64))[0].ravel()
    angle = float(np.linalg.norm(rvec))
    axis = rvec / angle if angle > 0 else np.zeros(3)
    q = np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])
    return q if q[3] >= 0 else -q


def normalize_points(points_px: np.ndarray, K: np.ndarray, D: Optional[np.ndarray] = None,
                     distortion_model: str = 'plumb_bob') -> np.ndarray:
    """OpenCV pixels ``[N x 2]`` to undistorted normalised camera coordinates ``(x/z, y/z)``.

    ``D`` are the CameraInfo coefficients of ``distortion_model`` (None or all zero = none:
    rectified images).
    """
    pts = np.ascontiguousarray(points_px, np.float64).reshape(-1, 1, 2)
    K = np.asarray(K, np.float64).reshape(3, 3)
    if D is None or not np.any(D):
        homog = np.concatenate([pts[:, 0], np.ones((len(pts), 1))], axis=1)
        return (homog @ np.linalg.inv(K).T)[:, :2]
    D = np.asarray(D, np.float64).ravel()
    if distortion_model == 'equidistant':
        return cv2.fisheye.undistortPoints(pts, K, D[:4]).reshape(-1, 2)
    if distortion_model in ('plumb_bob', 'rational_polynomial'):
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        return cv2.undistortPointsIter(pts, K, D, None, None, criteria).reshape(-1, 2)
    raise ValueError(f'unsupported distortion model {distortion_model!r}; one of '
                     f'{DISTORTION_MODELS}')


def _normalized_covariance(points_px, cov_px, K, D, model) -> np.ndarray:
    """Propagate pixel covariances ``[N x 2 x 2]`` to normalised coordinates.

    The undistortion Jacobian is taken by central differences (it is not the plain K^-1 when
    the lens distorts). Unknown (non-finite or not positive semi-definite) covariances are
    replaced by 1 px^2 isotropic.
    """
    n = len(points_px)
    if cov_px is None:
        return np.zeros((n, 2, 2))
    cov = np.asarray(cov_px, np.float64).reshape(n, 2, 2).copy()
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    bad = ~np.isfinite(cov).all(axis=(1, 2)) | (det < 0) | (cov[:, 0, 0] < 0)
    cov[bad] = np.eye(2)
    h = 0.5
    jac = np.empty((n, 2, 2))
    for k in range(2):
        step = np.zeros(2)
        step[k] = h
        jac[:, :, k] = (normalize_points(points_px + step, K, D, model)
                        - normalize_points(points_px - step, K, D, model)) / (2 * h)
    return jac @ cov @ jac.transpose(0, 2, 1)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """``[3 x 2]`` orthonormal basis of the plane orthogonal to unit ``t``."""
    return np.linalg.svd(t.reshape(1, 3))[2][1:].T


def _weighted_sampson(R, t, xa, xb, cov_a, cov_b) -> np.ndarray:
    """Residual ``x_b^T E x_a / sigma`` per match, ``sigma`` from the point covariances."""
    E = _skew(t) @ R
    ha = np.concatenate([xa, np.ones((len(xa), 1))], axis=1)
    hb = np.concatenate([xb, np.ones((len(xb), 1))], axis=1)
    line_b = ha @ E.T                  # E x_a: the epipolar line in B
    line_a = hb @ E                    # E^T x_b: the epipolar line in A
    err = np.einsum('ij,ij->i', hb, line_b)
    var = (np.einsum('ni,nij,nj->n', line_b[:, :2], cov_b, line_b[:, :2])
           + np.einsum('ni,nij,nj->n', line_a[:, :2], cov_a, line_a[:, :2]))
    return err / np.sqrt(np.maximum(var, 1e-30))


def _perturb(R0, t0, basis, p):
    """The pose at 5-DoF offset ``p = (d_theta[3], d_dir[2])`` from ``(R0, t0)``."""
    R = cv2.Rodrigues(np.asarray(p[:3], np.float64))[0] @ R0
    t = t0 + basis @ p[3:]
    return R, t / np.linalg.norm(t)


def _jacobian(R0, t0, basis, residual, h=1e-6) -> np.ndarray:
    cols = []
    for k in range(5):
        dp = np.zeros(5)
        dp[k] = h
        cols.append((residual(*_perturb(R0, t0, basis, dp))
                     - residual(*_perturb(R0, t0, basis, -dp))) / (2 * h))
    return np.stack(cols, axis=1)


def _refine(R, t, residual, iterations=5):
    """Gauss-Newton on the weighted Sampson error; a step is kept only if it lowers the cost.

    Returns the refined ``(R, t)`` and the Jacobian of the residuals there, ``[N x 5]``.
    """
    cost = float(np.sum(residual(R, t) ** 2))
    basis = _tangent_basis(t)
    J = _jacobian(R, t, basis, residual)
    for _ in range(iterations):
        r = residual(R, t)
        step = np.linalg.lstsq(J, -r, rcond=None)[0]
        R_new, t_new = _perturb(R, t, basis, step)
        cost_new = float(np.sum(residual(R_new, t_new) ** 2))
        if not cost_new < cost:
            break
        R, t, cost = R_new, t_new, cost_new
        basis = _tangent_basis(t)
        J = _jacobian(R, t, basis, residual)
    return R, t, J


def _covariance_6x6(J: np.ndarray, residuals: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Inverse Gauss-Newton Hessian (5-DoF) lifted to the REP 103 6x6.

    The 5x5 is scaled by the a-posteriori variance of unit weight when it exceeds 1 (the
    residuals say the given point covariances are optimistic), never scaled down.
    """
    n = len(residuals)
    hessian = J.T @ J
    cov5 = np.linalg.pinv(hessian)
    dof = max(n - 5, 1)
    cov5 *= max(1.0, float(residuals @ residuals) / dof)
    # (x, y, z, rx, ry, rz) = M (d_theta, d_dir) + scale * t
    M = np.zeros((6, 5))
    M[:3, 3:] = _tangent_basis(t)
    M[3:, :3] = np.eye(3)
    scale_dir = np.concatenate([t, np.zeros(3)])
    cov6 = M @ cov5 @ M.T + UNOBSERVABLE_VARIANCE * np.outer(scale_dir, scale_dir)
    cov6 = (cov6 + cov6.T) / 2
    w, V = np.linalg.eigh(cov6)
    return (V * np.maximum(w, MIN_EIGENVALUE)) @ V.T


def estimate_relative_pose(points_a, points_b, K_a, K_b, D_a=None, D_b=None,
                           model_a: str = 'plumb_bob', model_b: str = 'plumb_bob',
                           cov_a=None, cov_b=None, ransac_threshold_px: float = 1.0,
                           confidence: float = 0.9999, max_iters: int = 10000,
                           ) -> Optional[PoseEstimate]:
    """Pose of camera A in camera B's frame from matches ``points_a[i] <-> points_b[i]``.

    ``points_*``: ``[N x 2]`` OpenCV pixels. ``K_*``: 3x3 intrinsics; ``D_*`` CameraInfo
    distortion coefficients of ``model_*`` (None = rectified). ``cov_*``: ``[N x 2 x 2]`` point
    covariances in px^2 (None: A exact, B 1 px^2 isotropic). ``ransac_threshold_px``: inlier
    threshold, converted to normalised units with the mean focal length.

    Returns None when there are fewer than :data:`MIN_MATCHES` matches or no model is found.
    """
    points_a = np.asarray(points_a, np.float64).reshape(-1, 2)
    points_b = np.asarray(points_b, np.float64).reshape(-1, 2)
    n = len(points_a)
    if n < MIN_MATCHES:
        return None
    K_a = np.asarray(K_a, np.float64).reshape(3, 3)
    K_b = np.asarray(K_b, np.float64).reshape(3, 3)
    xa = normalize_points(points_a, K_a, D_a, model_a)
    xb = normalize_points(points_b, K_b, D_b, model_b)
    focal = float(np.mean([K_a[0, 0], K_a[1, 1], K_b[0, 0], K_b[1, 1]]))
    E, mask = cv2.findEssentialMat(xa, xb, np.eye(3), cv2.USAC_MAGSAC, confidence,
                                   ransac_threshold_px / focal, max_iters)
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    _, R, t, _ = cv2.recoverPose(E, xa, xb, np.eye(3), mask=mask.copy())
    t = t.ravel()
    if cov_b is None:
        cov_b = np.broadcast_to(np.eye(2), (n, 2, 2))
    ca = _normalized_covariance(points_a, cov_a, K_a, D_a, model_a)
    cb = _normalized_covariance(points_b, cov_b, K_b, D_b, model_b)
    unit = np.broadcast_to(np.eye(2), (n, 2, 2))

    def fit(mask, R, t):
        """Refine on the matches in ``mask``: (R, t, Jacobian, weighted residuals)."""
        def residual(R_, t_):
            return _weighted_sampson(R_, t_, xa[mask], xb[mask], ca[mask], cb[mask])
        R, t, J = _refine(R, t, residual)
        return R, t, J, residual(R, t)

    def sampson_px(R, t):
        return np.abs(_weighted_sampson(R, t, xa, xb, unit, unit)) * focal

    # Refine on the RANSAC inliers (recoverPose's cheirality subset can be half of a wrong
    # decomposition), then re-select the inliers with the refined model and refine once more
    # (the local-optimisation step of LO-RANSAC).
    inliers = mask.ravel() > 0
    R, t, J, r = fit(inliers, R, t)
    reselected = sampson_px(R, t) < ransac_threshold_px
    if reselected.sum() >= MIN_MATCHES and (reselected != inliers).any():
        inliers = reselected
        R, t, J, r = fit(inliers, R, t)
    return PoseEstimate(R=R, t=t, covariance=_covariance_6x6(J, r, t), inliers=inliers,
                        num_matches=n, num_inliers=int(inliers.sum()),
                        mean_epipolar_error=float(sampson_px(R, t)[inliers].mean()))
