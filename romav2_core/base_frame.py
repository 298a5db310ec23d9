"""The camera's odometry as the odometry of the body it is mounted on (REP 105 ``odom -> base``).

Frames. The camera odometry (:mod:`romav2_core.odometry`) is the pose of the left camera's
optical frame ``cam`` (x right, y down, z forward) in ``camodom``, the camera's pose at the
start. A robot wants the pose of its body frame ``base`` (REP 103: x forward, y left, z up) in
``odom``, the body's pose at the start, so that ``odom``'s z is up when the robot starts level.
The camera is rigidly mounted: :class:`CameraMount` is the pose of ``cam`` in ``base``
(``p_base = R_m p_cam + t_m``, what TF's ``base -> cam`` transform says). Then
``odom -> camodom`` is that same mount (both are taken at the start), and

    ``T_odom_base(t) = T_m T_camodom_cam(t) T_m^-1``:
    ``R_b = R_m R_c R_m^T``, ``t_b = R_m t_c + t_m - R_b t_m``.

Covariances follow the project's convention (``odometry.py``): 6x6, REP 103 row-major over
``(x, y, z, rot X, rot Y, rot Z)``; a pose's rotation error is about the fixed axes of the frame
it is expressed in, ``R = Exp(d_theta) R_hat``, ``t = t_hat + d_t``. Through the map above,
``Exp(R_m d_theta_c) = R_m Exp(d_theta_c) R_m^T`` and ``d(R_b t_m) = -[R_b t_m]x d_theta_b``, so

    ``d_theta_b = R_m d_theta_c`` (exactly), ``d_t_b = R_m d_t_c + [R_b t_m]x R_m d_theta_c``
    (first order: the rest is ``|d_theta|^2 |t_m| / 2``),

and ``C_b = J C_c J^T`` with ``J = [[R_m, [R_b t_m]x R_m], [0, R_m]]``.

Twists (nav_msgs/Odometry: in the child frame): the camera's linear velocity ``v_c`` (of its
origin, m/s) and angular velocity ``w_c`` (rad/s), both on ``cam``'s axes. The body turns
with the camera, ``w_b = R_m w_c``; its origin sits at ``-R_m^T t_m`` in ``cam``, so it moves at
``v_c + w_c x (-R_m^T t_m)`` on ``cam``'s axes, i.e. ``v_b = R_m v_c + t_m x w_b`` on
``base``'s. That is linear and exact for the instantaneous velocities (``A = [[R_m, [t_m]x R_m],
[0, R_m]]``, ``C_b = A C_c A^T``); the odometry's per-step twist (the mean velocity over a
step) maps to first order in the rotation over the step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from romav2_core.tracking import OdometryStep


def _skew(v: np.ndarray) -> np.ndarray:
    """``[3]`` -> the ``[3 x 3]`` matrix of ``v x .``."""
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


@dataclass(frozen=True)
class CameraMount:
    """Pose of the left camera's optical frame in the body frame: ``p_base = R p_cam + t``."""

    R: np.ndarray      # [3 x 3] rotation cam -> base (its columns: the optical axes in base)
    t: np.ndarray      # [3] m, the optical centre in base

    def __post_init__(self):
        object.__setattr__(self, 'R', np.asarray(self.R, np.float64).reshape(3, 3))
        object.__setattr__(self, 't', np.asarray(self.t, np.float64).reshape(3))


def pose_in_base_odom(mount: CameraMount, R_c: np.ndarray, t_c: np.ndarray,
                      covariance_c: np.ndarray) -> tuple:
    """Pose of the camera in ``camodom`` (``R_c`` ``[3 x 3]``, ``t_c`` ``[3]`` m, 6x6
    covariance on ``camodom``'s axes) -> ``(R_b, t_b, covariance_b)``: the pose of the body in
    ``odom`` and its 6x6 covariance on ``odom``'s axes (module docstring)."""
    Rm, tm = mount.R, mount.t
    R_b = Rm @ np.asarray(R_c, np.float64) @ Rm.T
    t_b = Rm @ np.asarray(t_c, np.float64) + tm - R_b @ tm
    J = np.kron(np.eye(2), Rm)
    J[:3, 3:] = _skew(R_b @ tm) @ Rm
    cov = J @ np.asarray(covariance_c, np.float64) @ J.T
    return R_b, t_b, (cov + cov.T) / 2


def twist_in_base(mount: CameraMount, linear_c: np.ndarray, angular_c: np.ndarray,
                  covariance_c: np.ndarray) -> tuple:
    """The camera's twist (``linear_c`` m/s, ``angular_c`` rad/s, ``[3]`` each, on the
    camera's axes; 6x6 covariance over ``(v, w)``) -> ``(linear_b, angular_b, covariance_b)``:
    the body's twist on the body's axes (module docstring)."""
    Rm, tm = mount.R, mount.t
    A = np.kron(np.eye(2), Rm)
    A[:3, 3:] = _skew(tm) @ Rm
    out = A @ np.r_[np.asarray(linear_c, np.float64), np.asarray(angular_c, np.float64)]
    cov = A @ np.asarray(covariance_c, np.float64) @ A.T
    return out[:3], out[3:], (cov + cov.T) / 2


def step_in_base(step: OdometryStep, mount: CameraMount) -> OdometryStep:
    """An odometry step of the camera (:class:`romav2_core.tracking.OdometryStep`) as the
    body's: pose of ``base`` in ``odom``, twist on ``base``'s axes, both covariances mapped.
    Stateless: the mount may become known after the odometry started."""
    R, p, cov = pose_in_base_odom(mount, step.R, step.p, step.covariance)
    v, w, cov_twist = twist_in_base(mount, step.linear, step.angular, step.twist_covariance)
    return dataclasses.replace(step, R=R, p=p, covariance=cov, linear=v, angular=w,
                               twist_covariance=cov_twist)
