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
robust essential matrix (OpenCV USAC, :data:`RANSAC_METHOD`), cheirality (the decomposition with
the most RANSAC inliers in front of both cameras), a robust (Cauchy) Gauss-Newton fit on the
RANSAC inliers that re-selects the inliers by the pixel threshold, then Gauss-Newton on the
covariance-weighted Sampson error of those inliers, whose inverse Hessian is the 5-DoF
covariance. The Jacobians are analytic; the undistortion Jacobian that carries the pixel
covariances to normalised coordinates is ``K^-1`` on rectified images and OpenCV's projection
Jacobian, inverted, on distorted ones. ``bench/bench_pose.py`` measures time and accuracy.
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
#: Robust estimator of the essential matrix (OpenCV's USAC_FAST preset: LO-RANSAC with a short
#: local optimisation) and the stopping rule of both estimators' RANSAC: enough samples to
#: draw an all-inlier one with this confidence at the best inlier ratio found so far, at most
#: RANSAC_MAX_ITERS. The refinement that follows does the accuracy; bench/bench_pose.py
#: compares them with the MAGSAC++ / 0.9999 / 10000 iterations this replaced.
RANSAC_METHOD = cv2.USAC_FAST
RANSAC_CONFIDENCE = 0.999
RANSAC_MAX_ITERS = 1000
#: RANSAC scores its hypotheses on at most this many of the matches (every n-th, so that they
#: spread over the image as all do); its model is checked against all of them, and the
#: refinement that follows fits all: RANSAC only has to start it in the right basin.
RANSAC_SCORED_MATCHES = 1000


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
    #: What the refinement started from: 'ransac', or 'prediction' (metric poses: a predicted
    #: pose that explained the matches, ``odometry.MotionModel``).
    seeded_by: str = 'ransac'

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


def undistortion_jacobian(normalized: np.ndarray, K: np.ndarray, D: Optional[np.ndarray] = None,
                          distortion_model: str = 'plumb_bob') -> np.ndarray:
    """``[N x 2 x 2]`` derivative of the normalised coordinates by the pixel, at the undistorted
    normalised points ``normalized`` ``[N x 2]`` (:func:`normalize_points` of the pixels).

    Rectified (``D`` None or zero): ``K^-1``'s 2x2 block, the same for every point. Otherwise the
    inverse of the lens projection's Jacobian at the point (inverse function theorem), which
    OpenCV's projection gives in closed form: a point ``(x, y, 1)`` moved by ``tvec`` projects
    like ``(x, y)`` moved by ``tvec``'s ``x, y``.
    """
    K = np.asarray(K, np.float64).reshape(3, 3)
    n = len(normalized)
    if D is None or not np.any(D):
        return np.broadcast_to(np.linalg.inv(K[:2, :2]), (n, 2, 2))
    D = np.asarray(D, np.float64).ravel()
    rays = np.c_[normalized, np.ones(n)].reshape(-1, 1, 3)
    zero = np.zeros(3)
    if distortion_model == 'equidistant':
        # columns: f (2), c (2), k (4), rvec (3), tvec (3), skew
        jac = cv2.fisheye.projectPoints(rays, zero, zero, K, D[:4])[1][:, 11:13]
    else:
        # columns: rvec (3), tvec (3), f (2), c (2), distortion
        jac = cv2.projectPoints(rays, zero, zero, K, D)[1][:, 3:5]
    a, b = jac[0::2, 0], jac[0::2, 1]          # d px / d (x, y) of each point
    c, d = jac[1::2, 0], jac[1::2, 1]
    inverse = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], 1)
    return inverse / (a * d - b * c)[:, None, None]


def _normalized_covariance(cov_px, jacobian) -> np.ndarray:
    """Pixel covariances ``[N x 2 x 2]`` (px^2) to normalised coordinates, ``J C J^T`` with
    :func:`undistortion_jacobian` ``J``; symmetric by construction. Unknown (non-finite or
    not positive semi-definite) covariances are replaced by 1 px^2 isotropic."""
    n = len(jacobian)
    cov = np.asarray(cov_px, np.float64).reshape(n, 2, 2)
    cov = (cov + cov.transpose(0, 2, 1)) / 2
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    bad = ~np.isfinite(cov).all(axis=(1, 2)) | (det < 0) | (cov[:, 0, 0] < 0)
    if bad.any():
        cov[bad] = np.eye(2)
    return jacobian @ cov @ jacobian.transpose(0, 2, 1)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


#: The cross-product matrices of the unit axes, ``[3 x 3 x 3]``.
_AXIS_SKEWS = np.stack([_skew(e) for e in np.eye(3)])


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """``[3 x 2]`` orthonormal basis of the plane orthogonal to unit ``t``."""
    return np.linalg.svd(t.reshape(1, 3))[2][1:].T


def _perturb(R0, t0, basis, p):
    """The pose at 5-DoF offset ``p = (d_theta[3], d_dir[2])`` from ``(R0, t0)``."""
    R = cv2.Rodrigues(np.asarray(p[:3], np.float64))[0] @ R0
    t = t0 + basis @ p[3:]
    return R, t / np.linalg.norm(t)


class _WeightedSampson:
    """Residual ``x_b^T E x_a / sigma`` per match, ``E = [t]x R``, ``sigma^2`` the variance of
    ``x_b^T E x_a`` from the point covariances (first order), with its exact Jacobian over
    the 5-DoF offset of :func:`_perturb`.

    ``xa``, ``xb``: ``[N x 2]`` normalised points; ``cov_a``, ``cov_b``: ``[N x 2 x 2]``
    symmetric covariances of them (``cov_a`` None: A exact). Everything is kept as flat
    per-match arrays, so the sums over 2 or 3 coordinates are matrix products.
    """

    def __init__(self, xa, xb, cov_a, cov_b):
        self.xa, self.xb = np.c_[xa, np.ones(len(xa))], np.c_[xb, np.ones(len(xb))]
        self.outer = (self.xb[:, :, None] * self.xa[:, None, :]).reshape(-1, 9)  # x_b x_a^T
        self.cov_a = None if cov_a is None else _components(cov_a)
        self.cov_b = _components(cov_b)

    def subset(self, mask) -> '_WeightedSampson':
        out = _WeightedSampson.__new__(_WeightedSampson)
        out.xa, out.xb, out.outer = self.xa[mask], self.xb[mask], self.outer[mask]
        out.cov_a = None if self.cov_a is None else self.cov_a[:, mask]
        out.cov_b = self.cov_b[:, mask]
        return out

    def evaluate(self, R, t, basis=None):
        """Residuals ``[N]`` and, with the tangent ``basis`` of ``t``, the Jacobian ``[N x 5]``.

        With ``l`` the first two coefficients of an epipolar line and ``w = C l``, the
        variance is ``l_b.w_b + l_a.w_a``; a generator ``G = dE`` moves the error by
        ``x_b^T G x_a`` and the half variance by ``w_b.(G x_a)[:2] + w_a.(G^T x_b)[:2]``.
        """
        E = _skew(t) @ R
        err = self.outer @ E.ravel()
        wb0, wb1, var = _line_weights(self.cov_b, self.xa @ E[0], self.xa @ E[1])  # E x_a
        if self.cov_a is not None:
            wa0, wa1, var_a = _line_weights(self.cov_a, self.xb @ E[:, 0], self.xb @ E[:, 1])
            var = var + var_a
        sigma = np.sqrt(np.maximum(var, 1e-30))
        r = err / sigma
        if basis is None:
            return r, None
        # dE of R = Exp(d_theta) R (rotation about B's axes) and of t along the basis
        G = np.concatenate([_skew(t) @ _AXIS_SKEWS @ R, np.stack([_skew(b) @ R for b in basis.T])])
        d_err = self.outer @ G.reshape(5, 9).T                                  # [N x 5]
        d_half_var = wb0[:, None] * (self.xa @ G[:, 0].T) + wb1[:, None] * (self.xa @ G[:, 1].T)
        if self.cov_a is not None:
            d_half_var += (wa0[:, None] * (self.xb @ G[:, :, 0].T)
                           + wa1[:, None] * (self.xb @ G[:, :, 1].T))
        return r, (d_err - (r / sigma)[:, None] * d_half_var) / sigma[:, None]

    def sampson_px(self, R, t, focal: float) -> np.ndarray:
        """Unweighted Sampson distance per match, px of the mean focal length ``focal``."""
        E = _skew(t) @ R
        norm2 = sum((x @ row) ** 2 for x, row in ((self.xa, E[0]), (self.xa, E[1]),
                                                  (self.xb, E[:, 0]), (self.xb, E[:, 1])))
        return np.abs(self.outer @ E.ravel()) / np.sqrt(np.maximum(norm2, 1e-30)) * focal


def _components(cov: np.ndarray) -> np.ndarray:
    """``[N x 2 x 2]`` symmetric -> ``[3 x N]`` rows ``(c_xx, c_xy, c_yy)``."""
    return np.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]])


def _line_weights(cov: np.ndarray, l0: np.ndarray, l1: np.ndarray) -> tuple:
    """``w = C l`` and ``l.w`` per match for line coefficients ``(l0, l1)`` ``[N]`` and
    covariances ``cov`` of :func:`_components`."""
    w0, w1 = cov[0] * l0 + cov[1] * l1, cov[1] * l0 + cov[2] * l1
    return w0, w1, l0 * w0 + l1 * w1


#: Gauss-Newton stops when a step would lower the whitened cost by less than this; the
#: estimate is then within about sqrt(this) standard deviations of the optimum.
GN_DECREMENT_TOL = 1e-6
#: The looser stopping rule of a fit that only selects the inliers for the final one
#: (0.1 standard deviations).
GN_COARSE_DECREMENT_TOL = 1e-2
#: Scale of the Cauchy loss of a robust fit, in robust standard deviations of the whitened
#: residuals (2.385: 95 % efficiency on Gaussian residuals).
CAUCHY_SCALE = 2.385


def cauchy_scale(r: np.ndarray) -> float:
    """Scale of the Cauchy loss for whitened residuals ``r``: :data:`CAUCHY_SCALE` x their
    robust spread (1.4826 x the median absolute residual), never below the predicted 1, so
    that outliers which RANSAC's pixel threshold let in weigh little whether or not the given
    covariances are optimistic."""
    return CAUCHY_SCALE * max(1.0, 1.4826 * float(np.median(np.abs(r))))


def irls_sqrt_weights(r: np.ndarray, scale: float) -> np.ndarray:
    """Square roots of the iteratively-reweighted least-squares weights of the Cauchy loss
    ``1 / (1 + (r / c)^2)``."""
    return 1 / np.sqrt(1 + (r / scale) ** 2)


def robust_cost(r: np.ndarray, scale: Optional[float] = None) -> float:
    """``sum r^2``, or with a ``scale`` the Cauchy loss ``sum c^2 log(1 + (r / c)^2)``."""
    if scale is None:
        return float(r @ r)
    return float(scale ** 2 * np.sum(np.log1p((r / scale) ** 2)))


def _gauss_newton_step(J: np.ndarray, r: np.ndarray):
    """The least-squares step of ``r + J p`` and the cost decrease it predicts
    (``g^T H^-1 g``, whitened units)."""
    g = J.T @ r
    step = -np.linalg.lstsq(J.T @ J, g, rcond=None)[0]
    return step, float(-g @ step)


def _refine(problem: _WeightedSampson, R, t, robust: bool = False,
            tol: float = GN_DECREMENT_TOL, max_iterations: int = 10):
    """Gauss-Newton on the weighted Sampson error until the predicted decrease is below
    ``tol``; a step is kept only if it lowers the cost. ``robust``: the Cauchy loss of
    :func:`cauchy_scale` (fixed at the start) instead of the squares, by iteratively reweighted
    least squares.

    Returns the refined ``(R, t)``, the Jacobian ``[N x 5]`` and the residuals ``[N]`` there.
    """
    basis = _tangent_basis(t)
    r, J = problem.evaluate(R, t, basis)
    scale = cauchy_scale(r) if robust else None
    cost = robust_cost(r, scale)
    for _ in range(max_iterations):
        sw = np.ones_like(r) if scale is None else irls_sqrt_weights(r, scale)
        step, decrease = _gauss_newton_step(J * sw[:, None], r * sw)
        if decrease < tol:
            break
        R_new, t_new = _perturb(R, t, basis, step)
        basis_new = _tangent_basis(t_new)
        r_new, J_new = problem.evaluate(R_new, t_new, basis_new)
        cost_new = robust_cost(r_new, scale)
        if not cost_new < cost:
            break
        R, t, basis, r, J, cost = R_new, t_new, basis_new, r_new, J_new, cost_new
    return R, t, J, r


def _in_front_count(R, t, xa, xb) -> int:
    """How many matches triangulate (closest points of the two rays) in front of both
    cameras for the pose ``p_B = R p_A + t``; ``xa``, ``xb`` homogeneous ``[N x 3]``."""
    m = xa @ R.T                               # A's rays in B
    mm, bb, mb = np.sum(m * m, 1), np.sum(xb * xb, 1), np.sum(m * xb, 1)
    mt, bt = m @ t, xb @ t
    det = mm * bb - mb * mb                    # > 0 unless the rays are parallel
    depth_a = mb * bt - bb * mt                # both times det
    depth_b = mm * bt - mb * mt
    return int(np.count_nonzero((depth_a > 0) & (depth_b > 0) & (det > 0)))


def _decompose(E, xa, xb):
    """The one of E's four ``(R, t)`` with the most matches in front of both cameras
    (what ``cv2.recoverPose`` does, without its triangulation of every match 4 times)."""
    R1, R2, t = cv2.decomposeEssentialMat(E)
    t = t.ravel()
    candidates = [(R1, t), (R1, -t), (R2, t), (R2, -t)]
    counts = [_in_front_count(R, t_, xa, xb) for R, t_ in candidates]
    return candidates[int(np.argmax(counts))]


def _ransac_essential(xa, xb, threshold, confidence, max_iters):
    """Robust essential matrix of normalised points: ``(E, inliers [N] bool)`` or None."""
    E, mask = cv2.findEssentialMat(xa, xb, np.eye(3), RANSAC_METHOD, confidence, threshold,
                                   max_iters)
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    return E, mask.ravel() > 0


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
                           confidence: float = RANSAC_CONFIDENCE,
                           max_iters: int = RANSAC_MAX_ITERS) -> Optional[PoseEstimate]:
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
    every = -(-n // RANSAC_SCORED_MATCHES)
    found = _ransac_essential(xa[::every], xb[::every], ransac_threshold_px / focal,
                              confidence, max_iters)
    if found is None:
        return None
    E, scored_inliers = found
    if cov_b is None:
        cov_b = np.broadcast_to(np.eye(2), (n, 2, 2))
    ca = None if cov_a is None else _normalized_covariance(
        cov_a, undistortion_jacobian(xa, K_a, D_a, model_a))
    cb = _normalized_covariance(cov_b, undistortion_jacobian(xb, K_b, D_b, model_b))
    problem = _WeightedSampson(xa, xb, ca, cb)
    R, t = _decompose(E, problem.xa[::every][scored_inliers],
                      problem.xb[::every][scored_inliers])
    inliers = problem.sampson_px(R, t, focal) < ransac_threshold_px
    if inliers.sum() < MIN_MATCHES:
        return None

    # A robust fit on the RANSAC inliers (their pixel threshold lets in outliers that the
    # covariance weighting would make heavy; the cheirality subset can be half of a wrong
    # decomposition), good enough to re-select the inliers with the refined model; then the
    # least-squares fit on those, the local-optimisation step of LO-RANSAC.
    R, t, _, _ = _refine(problem.subset(inliers), R, t, robust=True, tol=GN_COARSE_DECREMENT_TOL)
    reselected = problem.sampson_px(R, t, focal) < ransac_threshold_px
    if reselected.sum() >= MIN_MATCHES:
        inliers = reselected
    R, t, J, r = _refine(problem.subset(inliers), R, t)
    return PoseEstimate(R=R, t=t, covariance=_covariance_6x6(J, r, t), inliers=inliers,
                        num_matches=n, num_inliers=int(inliers.sum()),
                        mean_epipolar_error=float(problem.sampson_px(R, t, focal)[inliers]
                                                  .mean()))
