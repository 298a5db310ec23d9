"""The camera's mount on the robot: from ``/tf_static`` as a robot publishes it, or a parameter.

A robot's ``robot_state_publisher`` (and any ``static_transform_publisher``) publishes its
fixed joints on ``/tf_static`` (tf2_msgs/TFMessage) with a reliable, transient-local ("latched")
QoS, so a late subscriber still gets every transform once. :class:`StaticTransformTree` keeps
them as tf2 does (one parent per child frame; a newer transform of a child replaces the older)
and resolves the transform between any two frames of one tree, up and down it
(``base_link -> camera_link -> camera_left_optical_frame``). :class:`StaticTfListener` fills a
tree from ``/tf_static`` with tf2_ros's static-listener QoS (reliable, transient local, depth
100). tf2_msgs is part of every ROS install but not of the PyPI ROS wheels: without it the
listener logs that only the parameter path works, and :func:`mount_from_parameter` reads the
mount from a parameter.

Conventions (tf2's): ``lookup(target, source)`` is the transform that maps coordinates in
``source`` into ``target``, i.e. the pose of ``source`` in ``target``: ``p_target = R p_source +
t``. A TransformStamped with ``header.frame_id = P`` and ``child_frame_id = C`` is the pose of C
in P. Quaternions are ROS's ``(x, y, z, w)``.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np

TF_STATIC_TOPIC = '/tf_static'
#: tf2_ros's static listener: reliable, transient local, keep last 100.
TF_STATIC_DEPTH = 100
#: As tf2's BufferCore: a quaternion whose squared norm is further than this from 1 is refused
#: (a typo, not rounding); closer ones are normalised.
QUATERNION_NORM2_TOLERANCE = 1e-2


def quaternion_to_rotation(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` -> ``[3 x 3]`` rotation matrix."""
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _unit_quaternion(q: Sequence[float]) -> np.ndarray:
    q = np.asarray(q, np.float64)
    norm2 = float(q @ q)
    if not abs(norm2 - 1) <= QUATERNION_NORM2_TOLERANCE:
        raise ValueError(f'quaternion {q.tolist()} has norm {np.sqrt(norm2):.4g}, not 1')
    return q / np.sqrt(norm2)


def rpy_to_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF / tf2 ``setRPY`` angles (rad): ``R = Rz(yaw) Ry(pitch) Rx(roll)``, rotations about
    the fixed x, y, z axes in that order."""
    cr, sr, cp, sp, cy, sy = (np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch),
                              np.cos(yaw), np.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def mount_from_parameter(values: Sequence[float]) -> tuple:
    """The pose of the camera frame in the base frame from a parameter: ``[x, y, z, roll,
    pitch, yaw]`` (m, rad; URDF's ``<origin xyz rpy>`` and static_transform_publisher's
    ``--x .. --yaw``) or ``[x, y, z, qx, qy, qz, qw]`` (its quaternion form). Returns
    ``(R [3 x 3], t [3] m)``; ValueError with the reason for anything else."""
    v = np.asarray(values, np.float64).ravel()
    if len(v) not in (6, 7) or not np.isfinite(v).all():
        raise ValueError(f'a camera mount is [x, y, z, roll, pitch, yaw] or [x, y, z, qx, qy, '
                         f'qz, qw] of finite numbers, got {list(values)}')
    if len(v) == 6:
        return rpy_to_rotation(*v[3:]), v[:3].copy()
    return quaternion_to_rotation(*_unit_quaternion(v[3:])), v[:3].copy()


class FixedMount:
    """A mount given once (the ``base_to_camera`` parameter): the same pose of the camera in the
    base frame whatever their names; the ``lookup`` of :class:`StaticTransformTree`."""

    def __init__(self, values: Sequence[float]):
        self.R, self.t = mount_from_parameter(values)

    def lookup(self, target: str, source: str) -> tuple:
        return self.R, self.t


def camera_mounts(values: dict, bag_transforms=None, node=None):
    """Where a stereo_odometry pipeline gets its camera mount (``PipelineConfig.base_frame``),
    from the node's parameter ``values``: None without a ``base_frame``; the
    ``base_to_camera`` parameter when set; else a tree of the static transforms -- of
    ``/tf_static`` through ``node`` (:class:`StaticTfListener`), or the tf2_msgs/TFMessage
    messages ``bag_transforms`` (a replay's input bag)."""
    if values['mode'] != 'stereo_odometry' or not values['base_frame']:
        return None
    if values['base_to_camera'] is not None:
        return FixedMount(values['base_to_camera'])
    if node is not None:
        return StaticTfListener(node)
    tree = StaticTransformTree()
    for msg in bag_transforms or ():
        tree.add_message(msg)
    return tree


class StaticTransformTree:
    """Static transforms ``child -> (parent, R, t)``; thread-safe (a ROS callback adds, the
    node's worker looks up)."""

    def __init__(self):
        self._parent: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def set(self, parent: str, child: str, R: np.ndarray, t: np.ndarray) -> None:
        """The pose ``(R, t)`` of ``child`` in ``parent``; replaces ``child``'s earlier one."""
        with self._lock:
            self._parent[child] = (parent, np.asarray(R, np.float64),
                                   np.asarray(t, np.float64))

    def add_message(self, msg) -> None:
        """Every transform of a tf2_msgs/TFMessage (geometry_msgs/TransformStamped[])."""
        for tf in msg.transforms:
            r, tr = tf.transform.rotation, tf.transform.translation
            t = np.array([tr.x, tr.y, tr.z])
            try:
                R = quaternion_to_rotation(*_unit_quaternion((r.x, r.y, r.z, r.w)))
            except ValueError:
                continue        # tf2 ignores such a transform too (as one with NaN in it)
            if np.isfinite(t).all():
                self.set(tf.header.frame_id, tf.child_frame_id, R, t)

    def _pose_in_root(self, frame: str) -> tuple:
        """``(root, R, t)``: the pose of ``frame`` in the root of its tree (up the parents)."""
        R, t, seen = np.eye(3), np.zeros(3), {frame}
        while frame in self._parent:
            parent, R_p, t_p = self._parent[frame]
            if parent in seen:
                return None, None, None            # a loop: no tree
            seen.add(parent)
            R, t, frame = R_p @ R, R_p @ t + t_p, parent
        return frame, R, t

    def lookup(self, target: str, source: str) -> Optional[tuple]:
        """``(R, t)``: the pose of ``source`` in ``target`` (``p_target = R p_source + t``),
        or None while the two frames are not connected by the transforms received so far."""
        if target == source:
            return np.eye(3), np.zeros(3)
        with self._lock:
            root_s, R_s, t_s = self._pose_in_root(source)
            root_t, R_t, t_t = self._pose_in_root(target)
        if root_s is None or root_s != root_t:
            return None
        return R_t.T @ R_s, R_t.T @ (t_s - t_t)


class StaticTfListener:
    """``/tf_static`` into a :class:`StaticTransformTree`, on ``node``'s executor.

    Without tf2_msgs (the PyPI ROS wheels) nothing is subscribed, :attr:`available` is False
    and a warning says that the mount must come from the parameter instead.
    """

    def __init__(self, node, parameter_name: str = 'base_to_camera'):
        self.tree = StaticTransformTree()
        self._node, self._sub = node, None
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            node.get_logger().warn(
                f'tf2_msgs is not installed, so {TF_STATIC_TOPIC} cannot be read: give the '
                f'camera mount as the parameter {parameter_name} (a ROS install has tf2_msgs)')
            return
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=TF_STATIC_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._sub = node.create_subscription(TFMessage, TF_STATIC_TOPIC, self.tree.add_message,
                                             qos)

    @property
    def available(self) -> bool:
        return self._sub is not None

    def lookup(self, target: str, source: str) -> Optional[tuple]:
        """As :meth:`StaticTransformTree.lookup`: None until the transforms have arrived."""
        return self.tree.lookup(target, source)

    def destroy(self) -> None:
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._sub = None
