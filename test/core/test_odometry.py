"""Metric pose from stereo depth + matches, its covariance, and the odometry chain.

Oracles: synthetic scenes with known motion (exact and noisy), 4x4 homogeneous matrices for
the composition, Monte Carlo for every covariance (the Mahalanobis coverage of the true error
at 1/2/3 sigma over many noisy trials, against the chi-square distribution of 6 DoF).
"""
import cv2
import numpy as np
import pytest
from scipy.stats import chi2

from romav2_core.odometry import (MotionModel, _StereoPnP, _whitening, backproject, compose,
                                  estimate_metric_pose, twist)

K = np.array([[500.0, 0, 321.0], [0, 498.0, 239.0], [0, 0, 1]])
F, BASELINE = K[0, 0], 0.12
R_TRUE = cv2.Rodrigues(np.array([0.004, -0.012, 0.006]))[0]      # 0.8 deg
T_TRUE = np.array([0.08, -0.01, 0.15])                           # m


def rot_angle_deg(R):
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(R)[0])))


def scene(n=800, seed=0):
    """Pixels of A (OpenCV px) and their depths (2.5-8 m)."""
    rng = np.random.default_rng(seed)
    px = rng.uniform([10, 10], [630, 470], (n, 2))
    return px, rng.uniform(2.5, 8.0, n)


def observe(px, z, R=R_TRUE, t=T_TRUE):
    X = np.c_[px, np.ones(len(px))] @ np.linalg.inv(K).T * z[:, None]
    Y = X @ R.T + t
    return Y[:, :2] / Y[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]


def noisy_problem(rng, n=400, sigma_px=0.4, sigma_d=0.25, outliers=0.0):
    """Matches with Gaussian noise of covariance sigma_px^2 I (and outliers), and the stereo
    disparities of A's pixels with noise sigma_d px, as a stereo matcher gives them."""
    px, z = scene(n, seed=int(rng.integers(1 << 30)))
    obs = observe(px, z) + rng.normal(0, sigma_px, (n, 2))
    bad = rng.random(n) < outliers
    obs[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
    d = F * BASELINE / z + rng.normal(0, sigma_d, n)
    cov_b = np.broadcast_to(sigma_px ** 2 * np.eye(2), (n, 2, 2))
    return px, d, np.full(n, sigma_d ** 2), obs, cov_b


def error6(est):
    """REP 103 error (x, y, z, rot X, rot Y, rot Z) of the estimate: t - t_true and the
    rotation vector of R R_true^T (fixed axes, R = Exp(d_theta) R_true)."""
    return np.r_[est.t - T_TRUE, cv2.Rodrigues(est.R @ R_TRUE.T)[0].ravel()]


def pose(*problem):
    return estimate_metric_pose(*problem, K, K, F * BASELINE)


def test_exact_data_gives_the_exact_metric_pose():
    px, z = scene()
    est = pose(px, F * BASELINE / z, np.full(len(z), 1e-4), observe(px, z),
               np.broadcast_to(0.25 * np.eye(2), (len(z), 2, 2)))
    assert est.scale_observable and est.num_inliers == len(z)
    assert rot_angle_deg(est.R @ R_TRUE.T) < 1e-4
    np.testing.assert_allclose(est.t, T_TRUE, atol=1e-6)
    assert est.mean_reprojection_error < 1e-4


def test_the_scale_is_unbiased():
    """Depths from noisy disparities: over many trials the translation's length is right on
    average (weights that depend on the noisy depths would shrink it by about 1 %)."""
    rng = np.random.default_rng(7)
    ratios = [np.linalg.norm(pose(*noisy_problem(rng, sigma_d=0.5)).t) / np.linalg.norm(T_TRUE)
              for _ in range(60)]
    assert abs(np.mean(ratios) - 1) < 3 * np.std(ratios) / np.sqrt(len(ratios)) + 1e-3


def test_outliers_are_rejected():
    rng = np.random.default_rng(5)
    est = pose(*noisy_problem(rng, n=600, outliers=0.3))
    e = error6(est)
    assert np.linalg.norm(e[:3]) < 0.01 * np.linalg.norm(T_TRUE)    # < 1 % of the motion
    assert np.degrees(np.linalg.norm(e[3:])) < 0.1
    assert 0.6 < est.num_inliers / est.num_matches < 0.8


def test_too_few_points_or_no_depth_gives_none():
    px, z = scene(n=8)
    assert pose(px, F * BASELINE / z, np.ones(8), observe(px, z),
                np.ones((8, 2, 2)) * np.eye(2)) is None
    px, z = scene()
    assert pose(px, np.full(len(z), np.nan), np.ones(len(z)), observe(px, z),
                np.broadcast_to(np.eye(2), (len(z), 2, 2))) is None


@pytest.mark.slow
def test_covariance_is_calibrated():
    """Over 300 noisy trials, the fraction of true errors inside the predicted 1/2/3-sigma
    ellipsoids (chi-square, 6 DoF) matches 68.3 / 95.4 / 99.7 %. The band is three binomial
    standard deviations (n = 300) plus 2 % for the first-order approximation."""
    rng = np.random.default_rng(0)
    d2 = []
    for _ in range(300):
        est = pose(*noisy_problem(rng))
        e = error6(est)
        d2.append(e @ np.linalg.solve(est.covariance, e))
    d2 = np.array(d2)
    for p in (0.6827, 0.9545, 0.9973):
        coverage = float(np.mean(d2 <= chi2.ppf(p, 6)))
        band = 3 * np.sqrt(p * (1 - p) / len(d2)) + 0.02
        assert abs(coverage - p) <= band, (p, coverage, band)


def homogeneous(R, t):
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, t
    return M


def test_compose_equals_matrix_product_and_propagates_covariance():
    rng = np.random.default_rng(2)
    R1 = cv2.Rodrigues(np.array([0.1, -0.2, 0.3]))[0]
    p1 = np.array([1.0, -2.0, 0.5])
    A = rng.normal(size=(6, 6))
    cov1 = A @ A.T * 1e-4
    B = rng.normal(size=(6, 6))
    cov2 = B @ B.T * 1e-4
    R, p, cov = compose(R1, p1, cov1, R_TRUE, T_TRUE, cov2)
    np.testing.assert_allclose(homogeneous(R, p), homogeneous(R1, p1) @ homogeneous(R_TRUE, T_TRUE),
                               atol=1e-12)
    # Monte Carlo: perturb both poses by their covariances, compose, measure the spread
    samples = []
    L1, L2 = np.linalg.cholesky(cov1), np.linalg.cholesky(cov2)
    for _ in range(20000):
        e1, e2 = L1 @ rng.normal(size=6), L2 @ rng.normal(size=6)
        Ra = cv2.Rodrigues(e1[3:])[0] @ R1
        Rb = cv2.Rodrigues(e2[3:])[0] @ R_TRUE
        M = homogeneous(Ra, p1 + e1[:3]) @ homogeneous(Rb, T_TRUE + e2[:3])
        samples.append(np.r_[M[:3, 3] - p, cv2.Rodrigues(M[:3, :3] @ R.T)[0].ravel()])
    empirical = np.cov(np.array(samples).T)
    np.testing.assert_allclose(empirical, cov, atol=0.05 * np.abs(cov).max())


def test_twist_is_the_step_over_dt_in_the_new_frame():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6))
    cov = A @ A.T * 1e-6
    dt = 0.1
    v, w, cov_tw = twist(R_TRUE, T_TRUE, cov, dt)
    np.testing.assert_allclose(v, R_TRUE.T @ T_TRUE / dt)
    np.testing.assert_allclose(w, cv2.Rodrigues(R_TRUE)[0].ravel() / dt)
    samples = []
    L = np.linalg.cholesky(cov)
    for _ in range(20000):
        e = L @ rng.normal(size=6)
        Rs = cv2.Rodrigues(e[3:])[0] @ R_TRUE
        ts = T_TRUE + e[:3]
        samples.append(np.r_[Rs.T @ ts / dt, cv2.Rodrigues(Rs)[0].ravel() / dt])
    empirical = np.cov(np.array(samples).T)
    np.testing.assert_allclose(empirical, cov_tw, atol=0.05 * np.abs(cov_tw).max())


# ---------------------------------------------------------------- the fast path's pieces
def test_whitening_is_the_inverse_cholesky_factor():
    """The closed-form 2x2 whitening against numpy's Cholesky factor, inverted, on correlated
    anisotropic covariances; and it whitens: W C W^T = I."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(50, 2, 2))
    cov = A @ A.transpose(0, 2, 1) + 0.01 * np.eye(2)
    w00, w10, w11 = _whitening(cov)
    W = np.zeros_like(cov)
    W[:, 0, 0], W[:, 1, 0], W[:, 1, 1] = w00, w10, w11
    # the whitening adds 1e-12 px^2 to the diagonal, as the Cholesky of the old path did
    np.testing.assert_allclose(W, np.linalg.inv(np.linalg.cholesky(cov + 1e-12 * np.eye(2))),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(W @ cov @ W.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(2), cov.shape), atol=1e-9)


@pytest.mark.parametrize('robust', [False, True])
def test_reduced_normal_equations_match_a_numeric_jacobian(robust):
    """The analytic, depth-reduced normal equations (S, b) against a dense Jacobian of all
    residuals by central differences over (d_t, d_theta, d_rho), Schur-reduced with numpy; the
    robust (IRLS) system weighs each residual's row by the Cauchy weight."""
    rng = np.random.default_rng(2)
    px, d, var_d, obs, _ = noisy_problem(rng, n=15, sigma_px=0.6, sigma_d=0.3)
    A = rng.normal(size=(15, 2, 2))
    cov = A @ A.transpose(0, 2, 1) + 0.2 * np.eye(2)
    rho = d / (F * BASELINE)
    _, rays = backproject(px, rho, K)
    problem = _StereoPnP(rays, obs, _whitening(cov), d, np.sqrt(var_d), F * BASELINE, K)
    R = cv2.Rodrigues(np.array([0.002, -0.01, 0.004]))[0]           # near, not at, the truth
    t = T_TRUE + [0.003, -0.002, 0.004]
    res = problem.residuals(R, t, rho)
    scale = 2.0 if robust else None               # a scale that down-weighs some residuals
    S, b, _, _, _ = problem.normal_equations(R, t, rho, res, scale)

    def all_residuals(p):
        r, rd, _, _ = problem.residuals(cv2.Rodrigues(p[3:6])[0] @ R, t + p[:3], rho + p[6:])
        return np.r_[r, rd]
    h = 1e-7
    J = np.stack([(all_residuals(h * e) - all_residuals(-h * e)) / (2 * h)
                  for e in np.eye(6 + 15)], axis=1)
    r = all_residuals(np.zeros(21))
    if robust:
        sw = 1 / np.sqrt(1 + (r / scale) ** 2)
        J, r = J * sw[:, None], r * sw
    H, g = J.T @ J, J.T @ r
    Hpr, Hrr = H[:6, 6:], H[6:, 6:]
    S_dense = H[:6, :6] - Hpr @ np.linalg.solve(Hrr, Hpr.T)
    b_dense = g[:6] - Hpr @ np.linalg.solve(Hrr, g[6:])
    # central differences of a smooth residual: O(h^2) relative to these magnitudes
    np.testing.assert_allclose(S, S_dense, rtol=1e-5, atol=1e-6 * np.abs(S_dense).max())
    np.testing.assert_allclose(b, b_dense, rtol=1e-5, atol=1e-6 * np.abs(b_dense).max())


def test_noise_as_large_as_the_threshold_is_covered():
    """Match noise as large as the node's 1 px inlier threshold (the noisy depths spread the
    reprojection errors further) with 30 % outliers: the threshold truncates the inliers, yet
    the error stays unbiased in scale and inside the predicted 3-sigma ellipsoid (6 DoF) as
    often as the chi-square says, within three binomial deviations plus 5 % for the first
    order and the truncation (40 trials)."""
    rng = np.random.default_rng(9)
    d2, ratios = [], []
    for _ in range(40):
        px, d, var_d, obs, cov = noisy_problem(rng, n=800, sigma_px=1.0, sigma_d=1.0,
                                               outliers=0.3)
        est = estimate_metric_pose(px, d, var_d, obs, cov, K, K, F * BASELINE,
                                   ransac_threshold_px=1.0)
        e = error6(est)
        d2.append(e @ np.linalg.solve(est.covariance, e))
        ratios.append(np.linalg.norm(est.t) / np.linalg.norm(T_TRUE))
    p = 0.9973
    coverage = float(np.mean(np.array(d2) <= chi2.ppf(p, 6)))
    assert coverage >= p - 3 * np.sqrt(p * (1 - p) / len(d2)) - 0.05, coverage
    assert abs(np.mean(ratios) - 1) < 3 * np.std(ratios) / np.sqrt(len(ratios)) + 1e-3


@pytest.mark.parametrize('outliers', [0.0, 0.3])
@pytest.mark.parametrize('off', [(0.1, 0.01), (0.3, 0.02)])
def test_a_pose_seeded_by_a_close_prediction_is_the_ransac_seeded_pose(outliers, off):
    """A prediction ``off`` by (deg, m) -- 1 to 3 px -- replaces RANSAC and the refinement
    reaches the same optimum (both fits end on the same inliers: equal to a small fraction of
    the pose's own standard deviation; the Cauchy scale comes from a fit, not from the
    prediction's inflated residuals); one far off (0.3 m) leaves RANSAC to find the pose."""
    rng = np.random.default_rng(11)
    problem = noisy_problem(rng, n=800, sigma_px=0.5, sigma_d=0.3, outliers=outliers)
    ransac = pose(*problem)
    deg, m = off
    near = (cv2.Rodrigues(np.radians(deg) * np.array([0.8, 0.0, -0.6]))[0] @ R_TRUE,
            T_TRUE + m * np.array([1.0, 0.0, -0.5]))
    seeded = estimate_metric_pose(*problem, K, K, F * BASELINE, prior=near)
    assert (ransac.seeded_by, seeded.seeded_by) == ('ransac', 'prediction')
    sigma = np.sqrt(np.diag(ransac.covariance))
    assert np.all(np.abs(error6(seeded) - error6(ransac)) < 0.05 * sigma)
    assert abs(seeded.num_inliers - ransac.num_inliers) <= 0.01 * ransac.num_inliers
    far = estimate_metric_pose(*problem, K, K, F * BASELINE, prior=(R_TRUE, T_TRUE + 0.3))
    assert far.seeded_by == 'ransac'
    assert np.all(np.abs(error6(far) - error6(ransac)) < 0.05 * sigma)


def test_the_motion_model_predicts_a_constant_velocity_step():
    """Frames k = 1, 2 of a rig moving by the same step D each frame, posed against keyframe
    0 (``T_k = D^k``, p_keyframe = T p_frame): the prediction of frame 3 is D^3 (matrix power
    as the oracle); against another keyframe, or after a reset, nothing."""
    D = homogeneous(cv2.Rodrigues(np.array([0.01, -0.03, 0.005]))[0], [0.05, -0.01, 0.2])
    model = MotionModel()
    assert model.predict(7) is None
    T1, T2 = D, np.linalg.matrix_power(D, 2)
    model.add(7, T1[:3, :3], T1[:3, 3])
    R, t = model.predict(7)                       # one pose: that pose (no velocity yet)
    np.testing.assert_allclose(homogeneous(R, t), T1, atol=1e-12)
    model.add(7, T2[:3, :3], T2[:3, 3])
    R, t = model.predict(7)
    np.testing.assert_allclose(homogeneous(R, t), np.linalg.matrix_power(D, 3), atol=1e-12)
    assert model.predict(8) is None
    # a new keyframe: its own poses only
    model.add(8, T1[:3, :3], T1[:3, 3])
    np.testing.assert_allclose(homogeneous(*model.predict(8)), T1, atol=1e-12)
    assert model.predict(7) is None
    model.reset()
    assert model.predict(8) is None
