"""romav2_core.base_frame: the camera's odometry as the body's (REP 105 ``odom -> base``).

Oracles: (a) a simulated rigid motion of the body (a screw motion from ``scipy.linalg.expm``)
seen by a tilted camera gives the camera's odometry; the body's pose and twist must come
back exactly (the camera twist by central differences of the simulated camera trajectory).
(b) Monte Carlo: camera poses and twists drawn from an anisotropic, correlated covariance
(perturbed on the manifold, fixed-axes convention, with scipy's rotation maps), pushed through
the exact transform (4x4 matrix products), and the sample covariance of the body errors
compared with the propagated one. A deliberately wrong propagation must fail the same check.
"""
import numpy as np
import pytest
from scipy.linalg import expm
from scipy.spatial.transform import Rotation as Rot

from romav2_core.base_frame import CameraMount, pose_in_base_odom, step_in_base, twist_in_base
from romav2_core.tracking import OdometryStep

#: Optical axes (x right, y down, z forward) on a level body's axes (x forward, y left, z up).
OPTICAL_IN_BODY = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
#: The mount: pitched 20 deg down, rolled 3 deg, 0.1 m forward, 0.04 m left, 0.3 m up.
MOUNT_R = Rot.from_euler('xyz', [3.0, 20.0, 0.0], degrees=True).as_matrix() @ OPTICAL_IN_BODY
MOUNT_T = np.array([0.1, 0.04, 0.3])
MOUNT = CameraMount(MOUNT_R, MOUNT_T)
SAMPLES = 20000
#: Anisotropic 1-sigma of the camera pose (m, m, m, rad, rad, rad) and twist (m/s, rad/s).
POSE_SIGMA = np.array([0.01, 0.003, 0.02, 0.004, 0.02, 0.008])
TWIST_SIGMA = np.array([0.02, 0.01, 0.05, 0.05, 0.1, 0.03])


def se3(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def hat(xi):
    """(v, w) -> the 4x4 twist matrix."""
    X = np.zeros(np.shape(xi)[:-1] + (4, 4))
    v, w = xi[..., :3], xi[..., 3:]
    X[..., 0, 1], X[..., 0, 2], X[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    X[..., 1, 0], X[..., 2, 0], X[..., 2, 1] = w[..., 2], -w[..., 1], w[..., 0]
    X[..., :3, 3] = v
    return X


def vee(X):
    return np.concatenate([X[..., :3, 3], np.stack([X[..., 2, 1], X[..., 0, 2], X[..., 1, 0]],
                                                   -1)], -1)


def covariance(sigma, seed):
    """An SPD covariance with standard deviations ``sigma`` and random correlations."""
    rng = np.random.default_rng(seed)
    L = np.tril(rng.normal(size=(6, 6)), -1) * 0.5 + np.eye(6)
    C = L @ L.T
    d = np.sqrt(np.diag(C))
    return C / np.outer(d, d) * np.outer(sigma, sigma)


def covariance_misfit(samples, C):
    """Largest deviation of the sample covariance of ``samples`` ``[n x 6]`` from ``C``, in
    standard errors of a Gaussian sample covariance entry, ``sqrt((C_ii C_jj + C_ij^2) / n)``.
    Below 5 for the right ``C`` (5 standard errors over 36 entries: a false alarm in ~1e-5
    runs); a missing lever arm or wrong axes move entries by well over 15 (the negative
    controls below)."""
    z = (np.cov(samples.T) - C) / np.sqrt((np.outer(np.diag(C), np.diag(C)) + C ** 2) /
                                          len(samples))
    return float(np.abs(z).max())


# ---------------------------------------------------------------- (a) ground truth
def body_motion(start, xi_b, times):
    """Body poses ``T_world_base`` of a screw motion: constant body twist ``xi_b``."""
    return [start @ expm(hat(xi_b) * s) for s in times]


def camera_twist(T_world_cam, s, h=1e-5):
    """Twist (v, w) of the camera on its own axes at time ``s``, central differences:
    truncation ~h^2 |d3T| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11."""
    dT = (T_world_cam(s + h) - T_world_cam(s - h)) / (2 * h)
    return vee(np.linalg.inv(T_world_cam(s)) @ dT)


@pytest.mark.parametrize('start, xi_b', [
    # robot on a slope, driving and turning: every component of the twist non-zero
    (se3(Rot.from_euler('xyz', [4, -7, 35], degrees=True).as_matrix(), [3.0, -2.0, 0.5]),
     np.array([1.2, 0.1, 0.05, 0.02, -0.05, 0.3])),
    # level start, planar motion: REP 105's odom is z up, the pose stays in its x-y plane
    (se3(Rot.from_euler('z', 120, degrees=True).as_matrix(), [3.0, -2.0, 0.0]),
     np.array([1.0, 0.2, 0.0, 0.0, 0.0, 0.3])),
])
def test_known_body_motion_comes_back_exactly(start, xi_b):
    T_m = se3(MOUNT_R, MOUNT_T)
    times = np.linspace(0.0, 4.0, 9)

    def T_world_cam(s):
        return start @ expm(hat(xi_b) * s) @ T_m

    for s, T_wb in zip(times, body_motion(start, xi_b, times)):
        cam = np.linalg.inv(T_world_cam(0)) @ T_world_cam(s)          # camera odometry
        xi_c = camera_twist(T_world_cam, s)
        step = OdometryStep(R=cam[:3, :3], p=cam[:3, 3], covariance=np.zeros((6, 6)),
                            linear=xi_c[:3], angular=xi_c[3:],
                            twist_covariance=np.zeros((6, 6)), state='OK', segment=0,
                            keyframe_id=0)
        out = step_in_base(step, MOUNT)
        truth = np.linalg.inv(start) @ T_wb                            # base in odom
        # poses: products of a few 4x4 matrices, rounding only
        np.testing.assert_allclose(out.R, truth[:3, :3], atol=1e-12)
        np.testing.assert_allclose(out.p, truth[:3, 3], atol=1e-12)
        # twists: the camera's from finite differences (1e-10 class, see camera_twist)
        np.testing.assert_allclose(out.linear, xi_b[:3], atol=1e-8)
        np.testing.assert_allclose(out.angular, xi_b[3:], atol=1e-8)
        if not xi_b[2] and not start[2, 3] and not xi_b[3] and not xi_b[4]:
            assert abs(out.p[2]) < 1e-12 and np.allclose(out.R[2], [0, 0, 1], atol=1e-12)


# ---------------------------------------------------------------- (b) Monte Carlo
def perturbed_poses(R_hat, t_hat, C, n, seed):
    """Camera poses ``R = Exp(d_theta) R_hat``, ``t = t_hat + d_t``, ``(d_t, d_theta) ~ N(0,
    C)`` (fixed axes of the frame the pose is expressed in)."""
    d = np.random.default_rng(seed).multivariate_normal(np.zeros(6), C, size=n)
    R = Rot.from_rotvec(d[:, 3:]).as_matrix() @ R_hat
    return R, t_hat + d[:, :3]


def test_pose_covariance_matches_monte_carlo():
    R_hat = Rot.from_rotvec([0.05, 0.6, -0.1]).as_matrix()   # camera turned and moved
    t_hat = np.array([1.5, -0.2, 8.0])
    C_cam = covariance(POSE_SIGMA, seed=1)
    R_b_hat, t_b_hat, C_b = pose_in_base_odom(MOUNT, R_hat, t_hat, C_cam)

    T_m = se3(MOUNT_R, MOUNT_T)
    R, t = perturbed_poses(R_hat, t_hat, C_cam, SAMPLES, seed=2)
    T_cam = np.tile(np.eye(4), (SAMPLES, 1, 1))
    T_cam[:, :3, :3], T_cam[:, :3, 3] = R, t
    T_b = T_m @ T_cam @ np.linalg.inv(T_m)                       # the exact transform
    err = np.c_[T_b[:, :3, 3] - t_b_hat,
                Rot.from_matrix(T_b[:, :3, :3] @ R_b_hat.T).as_rotvec()]
    assert covariance_misfit(err, C_b) < 5

    # negative controls: the check has the power to see a missing lever arm or wrong axes
    J_no_lever = np.kron(np.eye(2), MOUNT_R)
    J_inverse_axes = np.kron(np.eye(2), MOUNT_R.T)
    for J in (J_no_lever, J_inverse_axes):
        assert covariance_misfit(err, J @ C_cam @ J.T) > 15


def test_twist_covariance_matches_monte_carlo():
    xi_hat = np.array([0.3, -0.05, 1.4, 0.01, 0.25, -0.02])     # camera frame
    C_cam = covariance(TWIST_SIGMA, seed=3)
    v_b, w_b, C_b = twist_in_base(MOUNT, xi_hat[:3], xi_hat[3:], C_cam)

    xi = np.random.default_rng(4).multivariate_normal(xi_hat, C_cam, size=SAMPLES)
    T_m = se3(MOUNT_R, MOUNT_T)
    # exact rigid-body kinematics: T_world_base = T_world_cam T_m^-1, so the body's twist
    # matrix is T_m hat(xi_cam) T_m^-1 (conjugation, no block formula)
    xi_b = vee(T_m @ hat(xi) @ np.linalg.inv(T_m))
    np.testing.assert_allclose(np.r_[v_b, w_b], vee(T_m @ hat(xi_hat) @ np.linalg.inv(T_m)),
                               atol=1e-12)
    assert covariance_misfit(xi_b, C_b) < 5

    A_no_lever = np.kron(np.eye(2), MOUNT_R)
    A_lever_reversed = np.kron(np.eye(2), MOUNT_R)
    A_lever_reversed[:3, 3:] = -hat(np.r_[np.zeros(3), MOUNT_T])[:3, :3] @ MOUNT_R
    for A in (A_no_lever, A_lever_reversed):
        assert covariance_misfit(xi_b, A @ C_cam @ A.T) > 15
