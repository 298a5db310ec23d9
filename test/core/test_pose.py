"""Relative pose from matches: accuracy on synthetic scenes, distortion models, covariance."""
import cv2
import numpy as np
import pytest

from romav2_core.pose import (UNOBSERVABLE_VARIANCE, _decompose, _perturb, _tangent_basis,
                              _WeightedSampson, estimate_relative_pose, normalize_points,
                              rotation_to_quaternion, undistortion_jacobian)

K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
R_TRUE = cv2.Rodrigues(np.array([0.03, -0.05, 0.01]))[0]
T_TRUE = np.array([0.3, 0.05, 0.1])


def scene(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(4, 10, n)]


def project(X, K=K, D=None, model='plumb_bob'):
    rvec, tvec = np.zeros(3), np.zeros(3)
    if model == 'equidistant':
        return cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), rvec, tvec, K, D)[0].reshape(-1, 2)
    return cv2.projectPoints(X, rvec, tvec, K, D)[0].reshape(-1, 2)


def angle_deg(R):
    return np.degrees(np.linalg.norm(cv2.Rodrigues(R)[0]))


def matches(noise_px=0.0, seed=0, outliers=0.0, **proj):
    X = scene(seed=seed)
    pa, pb = project(X, **proj), project(X @ R_TRUE.T + T_TRUE, **proj)
    rng = np.random.default_rng(seed + 1)
    pb = pb + rng.normal(0, noise_px, pb.shape)
    bad = rng.random(len(pb)) < outliers
    pb[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
    return pa, pb, bad


def check_pose(est, tol_deg=1.0, tol_t_deg=None):
    assert angle_deg(est.R @ R_TRUE.T) < tol_deg
    t = T_TRUE / np.linalg.norm(T_TRUE)
    assert np.degrees(np.arccos(np.clip(est.t @ t, -1, 1))) < (tol_t_deg or tol_deg)
    assert np.linalg.norm(est.t) == pytest.approx(1.0)


def check_covariance(cov, t):
    assert cov.shape == (6, 6)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0
    # the translation scale (along t) is the unobservable direction
    v = np.concatenate([t, np.zeros(3)])
    assert v @ cov @ v == pytest.approx(UNOBSERVABLE_VARIANCE, rel=1e-3)


def test_noisy_matches_with_outliers():
    pa, pb, bad = matches(noise_px=0.5, outliers=0.2)
    est = estimate_relative_pose(pa, pb, K, K, cov_b=np.broadcast_to(0.25 * np.eye(2),
                                                                     (len(pa), 2, 2)))
    # the translation direction is the weak part of a 0.33 m baseline at 4-10 m
    check_pose(est, tol_deg=0.5, tol_t_deg=3.0)
    check_covariance(est.covariance, est.t)
    assert est.num_matches == len(pa)
    assert (est.inliers & bad).sum() < 0.05 * bad.sum()
    assert est.mean_epipolar_error < 1.0
    assert not est.scale_observable


def test_exact_matches_give_tiny_but_spd_covariance():
    pa, pb, _ = matches()
    est = estimate_relative_pose(pa, pb, K, K)
    check_pose(est, tol_deg=1e-3)
    check_covariance(est.covariance, est.t)


@pytest.mark.parametrize('model,D', [
    ('plumb_bob', np.array([-0.25, 0.08, 0.001, -0.0005, 0.0])),
    ('rational_polynomial', np.array([-0.2, 0.05, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0])),
    ('equidistant', np.array([0.05, -0.01, 0.002, 0.0])),
])
def test_distorted_images_are_undistorted(model, D):
    X = scene(200)
    np.testing.assert_allclose(normalize_points(project(X, K, D, model), K, D, model),
                               X[:, :2] / X[:, 2:], atol=1e-7)
    pa, pb, _ = matches(noise_px=0.2, K=K, D=D, model=model)
    est = estimate_relative_pose(pa, pb, K, K, D, D, model, model)
    check_pose(est, tol_deg=0.5, tol_t_deg=3.0)
    check_covariance(est.covariance, est.t)


def test_normalize_points_inverts_projection():
    X = scene(50)
    np.testing.assert_allclose(normalize_points(project(X), K), X[:, :2] / X[:, 2:], atol=1e-9)
    with pytest.raises(ValueError, match='distortion model'):
        normalize_points(project(X), K, np.ones(5), 'kannala')


def test_covariance_matches_monte_carlo_spread():
    """Over noise draws on one scene, the rotation error spread agrees with the predicted
    sigma (within a factor 2): the covariance is neither over- nor under-confident."""
    sigma = 1.0
    X = scene(seed=3)
    pa, pb_exact = project(X), project(X @ R_TRUE.T + T_TRUE)
    cov = np.broadcast_to(sigma ** 2 * np.eye(2), (len(pa), 2, 2))
    errors, predicted = [], []
    for seed in range(30):
        pb = pb_exact + np.random.default_rng(seed).normal(0, sigma, pb_exact.shape)
        est = estimate_relative_pose(pa, pb, K, K, cov_b=cov, ransac_threshold_px=3.0)
        errors.append(cv2.Rodrigues(est.R @ R_TRUE.T)[0].ravel())
        predicted.append(np.sqrt(np.diag(est.covariance)[3:]))
    ratio = np.sqrt(np.mean(np.square(errors), axis=0)) / np.mean(predicted, axis=0)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_too_few_matches_returns_none():
    pa, pb, _ = matches()
    assert estimate_relative_pose(pa[:5], pb[:5], K, K) is None


def test_quaternion_ros_order():
    q = rotation_to_quaternion(cv2.Rodrigues(np.array([0.0, 0.0, np.pi / 2]))[0])
    np.testing.assert_allclose(q, [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)


def test_pose_between_rectified_frames_maps_to_the_optical_frames():
    """A rig with rectification rotations of 1.4-2.8 deg (cv2.stereoRectify of a known R, T):
    matches between the rectified images give the pose of the rectified frames (identity
    rotation); in_camera_frames must return the rig's own (R, T direction) within 0.05 deg,
    with the covariance rotated along."""
    K1 = np.array([[700.0, 0, 330.0], [0, 705.0, 238.0], [0, 0, 1]])
    K2 = np.array([[710.0, 0, 318.0], [0, 708.0, 244.0], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.01, -0.02, 0.015]))[0]          # 1.5 deg
    T = np.array([-0.12, 0.002, 0.002])
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(K1, np.zeros(5), K2, np.zeros(5), (640, 480),
                                                R, T, alpha=0)
    assert 1.0 < angle_deg(R1) < 3.0 and 1.0 < angle_deg(R2) < 3.0
    X = scene()                                                   # left optical frame
    pa = project(X @ R1.T, K=P1[:, :3])                           # rectified left pixels
    pb = project((X @ R.T + T) @ R2.T, K=P2[:, :3])               # rectified right pixels
    est = estimate_relative_pose(pa, pb, P1[:, :3], P2[:, :3])
    assert angle_deg(est.R) < 0.05                                # rectified: parallel
    mapped = est.in_camera_frames(R1, R2)
    assert angle_deg(mapped.R @ R.T) < 0.05
    t = T / np.linalg.norm(T)
    assert np.degrees(np.arccos(np.clip(mapped.t @ t, -1, 1))) < 0.05
    # the unobservable scale direction follows t into the optical frame
    check_covariance(mapped.covariance, mapped.t)


# ---------------------------------------------------------------- the fast path's pieces
K_ANISO = np.array([[520.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])   # fx != fy, 640 x 480


@pytest.mark.parametrize('model,D', [
    ('plumb_bob', None),
    ('plumb_bob', np.array([-0.25, 0.08, 0.001, -0.0005, 0.0])),
    ('rational_polynomial', np.array([-0.2, 0.05, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0])),
    ('equidistant', np.array([0.05, -0.01, 0.002, 0.0])),
])
def test_undistortion_jacobian_matches_finite_differences(model, D):
    """The closed-form Jacobian (K^-1, or OpenCV's projection Jacobian inverted) against
    central differences of OpenCV's iterative undistortion, on an anisotropic camera."""
    px = project(scene(200), K_ANISO, D, model)
    J = undistortion_jacobian(normalize_points(px, K_ANISO, D, model), K_ANISO, D, model)
    h = 0.01                      # px; the differences' error is O(h^2) of a smooth lens model
    numeric = np.stack([(normalize_points(px + step, K_ANISO, D, model)
                         - normalize_points(px - step, K_ANISO, D, model)) / (2 * h)
                        for step in ([h, 0], [0, h])], axis=2)
    # entries are ~1/fx = 2e-3; the undistortion converges to 1e-10 (its stopping rule)
    np.testing.assert_allclose(J, numeric, atol=1e-8)
    if D is None:
        np.testing.assert_allclose(J[0], [[1 / 520, 0], [0, 1 / 500]], rtol=1e-12)


def test_sampson_jacobian_is_the_derivative_of_the_residual():
    """The analytic Jacobian of the covariance-weighted Sampson residual (both points with
    correlated anisotropic covariances) against central differences of the residual."""
    rng = np.random.default_rng(4)
    pa, pb, _ = matches(noise_px=0.5)
    xa, xb = normalize_points(pa, K), normalize_points(pb, K)

    def covariances(n):
        A = rng.normal(size=(n, 2, 2)) * 1e-3
        return A @ A.transpose(0, 2, 1) + 1e-7 * np.eye(2)
    problem = _WeightedSampson(xa, xb, covariances(len(xa)), covariances(len(xa)))
    R = cv2.Rodrigues(np.array([0.01, 0.02, -0.01]))[0] @ R_TRUE   # off the optimum
    t = (T_TRUE + [0.02, -0.01, 0.0]) / np.linalg.norm(T_TRUE + [0.02, -0.01, 0.0])
    basis = _tangent_basis(t)
    _, J = problem.evaluate(R, t, basis)
    h = 1e-6                      # rad; central differences, error O(h^2)
    numeric = np.stack([(problem.evaluate(*_perturb(R, t, basis, h * e))[0]
                         - problem.evaluate(*_perturb(R, t, basis, -h * e))[0]) / (2 * h)
                        for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(J, numeric, rtol=1e-6, atol=1e-6 * np.abs(J).max())


@pytest.mark.parametrize('t', [T_TRUE, [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 1e-9, -1e-9],
                               [0.3, -0.3, 0.3]])
def test_tangent_basis_is_orthonormal_and_orthogonal_to_t(t):
    t = np.asarray(t, np.float64) / np.linalg.norm(t)
    basis = _tangent_basis(t)
    frame = np.c_[basis, t]           # with t, a rotation: orthonormal, determinant +-1
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-12)


@pytest.mark.parametrize('t', [T_TRUE, -T_TRUE, [0.0, 0.0, 0.4], [0.02, 0.0, -0.4]])
def test_decomposition_agrees_with_recover_pose(t):
    """The cheirality choice among E's four decompositions equals cv2.recoverPose's, for a
    sideways, a reversed, a forward and a backward motion."""
    X = scene()
    t = np.asarray(t, np.float64)
    xa = X[:, :2] / X[:, 2:]
    Y = X @ R_TRUE.T + t
    xb = Y[:, :2] / Y[:, 2:]
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R_TRUE
    R, t_dir = _decompose(E, np.c_[xa, np.ones(len(xa))], np.c_[xb, np.ones(len(xb))])
    _, R_cv, t_cv, _ = cv2.recoverPose(E, xa, xb, np.eye(3))
    np.testing.assert_allclose(R, R_cv, atol=1e-9)
    np.testing.assert_allclose(t_dir, t_cv.ravel(), atol=1e-9)
    np.testing.assert_allclose(R, R_TRUE, atol=1e-9)
    np.testing.assert_allclose(t_dir, t / np.linalg.norm(t), atol=1e-9)


def test_forward_motion_with_many_outliers_as_the_node_samples():
    """2000 matches (the node's num_samples) on an anisotropic camera, points at 2-30 m, a
    forward motion of 0.3 m and 3 deg, 40 % outliers spread over the image, anisotropic
    0.5 px noise with its covariances, the node's 1 px threshold."""
    rng = np.random.default_rng(8)
    axis = np.array([0.3, 0.9, 0.3]) / np.linalg.norm([0.3, 0.9, 0.3])
    R = cv2.Rodrigues(np.radians(3.0) * axis)[0]
    t = np.array([0.05, 0.01, 0.3])
    px = rng.uniform([0, 0], [639, 479], (6000, 2))
    depth = rng.uniform(2, 30, len(px))
    X = np.c_[px, np.ones(len(px))] @ np.linalg.inv(K_ANISO).T * depth[:, None]
    Y = X @ R.T + t
    pb = project(Y, K_ANISO)
    seen = (Y[:, 2] > 0) & (pb >= 0).all(1) & (pb <= [639, 479]).all(1)
    pa, pb = px[seen][:2000], pb[seen][:2000]
    sigma = np.c_[rng.uniform(0.3, 0.7, 2000), rng.uniform(0.3, 0.7, 2000)]
    pb = pb + rng.normal(size=pb.shape) * sigma
    outlier = rng.random(2000) < 0.4
    pb[outlier] = rng.uniform([0, 0], [639, 479], (outlier.sum(), 2))
    cov = np.zeros((2000, 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = sigma[:, 0] ** 2, sigma[:, 1] ** 2
    est = estimate_relative_pose(pa, pb, K_ANISO, K_ANISO, cov_b=cov, ransac_threshold_px=1.0)
    # bounds ~3x the 90th percentiles bench/bench_pose.py measured for such sets
    assert angle_deg(est.R @ R.T) < 0.1
    assert np.degrees(np.arccos(np.clip(est.t @ t / np.linalg.norm(t), -1, 1))) < 3.0
    assert est.inliers[~outlier].mean() > 0.95          # 1 px is 2-3 sigma of the noise
    assert est.inliers[outlier].mean() < 0.02           # a 1 px band around the lines
    check_covariance(est.covariance, est.t)

