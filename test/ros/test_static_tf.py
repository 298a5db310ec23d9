"""romav2_ros.static_tf: the camera mount from /tf_static or from a parameter.

Oracle: scipy's rotations and explicit 4x4 products along the known path of a hand-built
tree (a robot's base_link -> camera_link -> left/right optical frames, an IMU beside them, and
an unrelated tree). The rclpy test runs two publishing nodes and a reading node in one
subprocess (tf2_msgs, missing from the PyPI wheels, is built for it by tf2_msgs_build and must
be on the library path before the process starts).
"""
import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from scipy.spatial.transform import Rotation as Rot

from node_harness import node_env, with_env
from romav2_ros.static_tf import (StaticTfListener, StaticTransformTree, mount_from_parameter)

OPTICAL_Q = [-0.5, 0.5, -0.5, 0.5]        # camera_link (x fwd, y left, z up) -> optical
#: (parent, child, translation m, quaternion xyzw): the transforms a robot would publish.
ROBOT = [
    ('base_link', 'camera_link', [0.25, 0.02, 0.4],
     Rot.from_euler('xyz', [2, 15, -3], degrees=True).as_quat()),
    ('camera_link', 'camera_left_optical_frame', [0.0, 0.06, 0.0], OPTICAL_Q),
    ('camera_link', 'camera_right_optical_frame', [0.0, -0.06, 0.0], OPTICAL_Q),
    ('base_link', 'imu_link', [-0.1, 0.0, 0.12],
     Rot.from_euler('xyz', [180, 0, 90], degrees=True).as_quat()),
    ('map', 'beacon', [4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]),          # another tree
]


def matrix(translation, quaternion):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rot.from_quat(quaternion).as_matrix(), translation
    return T


EDGE = {child: matrix(t, q) for _, child, t, q in ROBOT}   # pose of the child in its parent
inv = np.linalg.inv


def transform_msg(parent, child, t, q):
    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent, child
    tr, r = msg.transform.translation, msg.transform.rotation
    tr.x, tr.y, tr.z = (float(v) for v in t)
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg


def robot_tree():
    tree = StaticTransformTree()
    tree.add_message(SimpleNamespace(transforms=[transform_msg(*row) for row in ROBOT]))
    return tree


def assert_pose(result, T):
    """``(R, t)`` against a 4x4 pose: float64 products of a few matrices, rounding only."""
    assert result is not None
    np.testing.assert_allclose(result[0], T[:3, :3], atol=1e-12)
    np.testing.assert_allclose(result[1], T[:3, 3], atol=1e-12)


def test_chain_resolution_up_and_down_the_tree():
    tree = robot_tree()
    base_left = EDGE['camera_link'] @ EDGE['camera_left_optical_frame']
    assert_pose(tree.lookup('base_link', 'camera_left_optical_frame'), base_left)   # down
    assert_pose(tree.lookup('camera_left_optical_frame', 'base_link'), inv(base_left))  # up
    assert_pose(tree.lookup('camera_right_optical_frame', 'camera_left_optical_frame'),
                inv(EDGE['camera_right_optical_frame']) @ EDGE['camera_left_optical_frame'])
    assert_pose(tree.lookup('imu_link', 'camera_left_optical_frame'),
                inv(EDGE['imu_link']) @ base_left)                        # up, then down
    assert_pose(tree.lookup('base_link', 'base_link'), np.eye(4))
    # the optical frame's axes: z forward (base x, pitched down), x right, y down
    R = tree.lookup('base_link', 'camera_left_optical_frame')[0]
    assert R[0, 2] > 0.9 and R[1, 0] < -0.9 and R[2, 1] < -0.9


def test_unconnected_unknown_and_looping_frames_give_none():
    tree = robot_tree()
    assert tree.lookup('base_link', 'beacon') is None              # another tree
    assert tree.lookup('base_link', 'camera_fisheye') is None      # not (yet) published
    assert tree.lookup('camera_fisheye', 'base_link') is None
    tree.set('a', 'b', np.eye(3), np.zeros(3))
    tree.set('b', 'a', np.eye(3), np.zeros(3))
    assert tree.lookup('a', 'base_link') is None                   # a loop is no tree


def test_a_newer_transform_of_a_child_replaces_the_older_and_bad_ones_are_ignored():
    tree = robot_tree()
    moved = ('base_link', 'camera_link', [0.3, 0.0, 0.5], Rot.from_euler('y', 25,
                                                                         degrees=True).as_quat())
    bad = [('base_link', 'imu_link', [0, 0, 0], [0, 0, 0, 0]),             # no rotation
           ('base_link', 'imu_link', [np.nan, 0, 0], [0, 0, 0, 1])]         # NaN
    tree.add_message(SimpleNamespace(transforms=[transform_msg(*r) for r in [moved, *bad]]))
    assert_pose(tree.lookup('base_link', 'camera_left_optical_frame'),
                matrix(*moved[2:]) @ EDGE['camera_left_optical_frame'])
    assert_pose(tree.lookup('base_link', 'imu_link'), EDGE['imu_link'])


def test_mount_parameter_in_urdf_rpy_and_quaternion_forms():
    xyz, rpy = [0.1, -0.03, 0.3], [0.05, 0.35, -0.2]
    R, t = mount_from_parameter(xyz + rpy)
    # URDF rpy: rotations about the fixed x, y, z axes in that order (scipy's extrinsic 'xyz')
    np.testing.assert_allclose(R, Rot.from_euler('xyz', rpy).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(t, xyz)
    q = Rot.from_euler('xyz', rpy).as_quat()
    R, t = mount_from_parameter(xyz + list(q * 1.003))          # rounded in a YAML file
    np.testing.assert_allclose(R, Rot.from_quat(q).as_matrix(), atol=1e-12)
    for bad in ([0.1, 0.2, 0.3, 0, 0], xyz + [0, 0, np.nan], xyz + [0, 0, 0, 2.0], []):
        with pytest.raises(ValueError):
            mount_from_parameter(bad)


def test_without_tf2_msgs_only_the_parameter_path_works(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tf2_msgs.msg', None)          # as the PyPI wheels
    monkeypatch.setitem(sys.modules, 'tf2_msgs', None)
    warnings = []

    class NodeWithoutTf2:
        def get_logger(self):
            return SimpleNamespace(warn=warnings.append)

        def create_subscription(self, *args):
            raise AssertionError('nothing to subscribe without tf2_msgs')

    listener = StaticTfListener(NodeWithoutTf2())
    assert not listener.available and listener.lookup('base_link', 'camera_link') is None
    assert len(warnings) == 1 and 'base_to_camera' in warnings[0]


# ------------------------------------------------------------------ over DDS
READER = textwrap.dedent('''
    import json, sys, time
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage
    from romav2_ros.static_tf import StaticTfListener

    groups, target, source = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    rclpy.init()
    executor = SingleThreadedExecutor()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    # like robot_state_publisher and a static_transform_publisher: one latched message each,
    # published before the reader exists
    for i, group in enumerate(groups):
        node = rclpy.create_node(f'static_publisher_{i}')
        msgs = []
        for parent, child, t, q in group:
            m = TransformStamped()
            m.header.frame_id, m.child_frame_id = parent, child
            tr, r = m.transform.translation, m.transform.rotation
            tr.x, tr.y, tr.z = t
            r.x, r.y, r.z, r.w = q
            msgs.append(m)
        node.create_publisher(TFMessage, '/tf_static', latched).publish(
            TFMessage(transforms=msgs))
        executor.add_node(node)
    reader = rclpy.create_node('mount_reader')
    listener = StaticTfListener(reader)
    executor.add_node(reader)
    before = listener.lookup(target, source)
    deadline = time.monotonic() + 30
    while listener.lookup(target, source) is None and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    found = listener.lookup(target, source)
    print(json.dumps({'available': listener.available, 'before': before is not None,
                      'R': None if found is None else found[0].tolist(),
                      't': None if found is None else found[1].tolist()}))
    rclpy.shutdown()
''')


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.usefixtures('ros_env_guard')
def test_mount_from_latched_tf_static_of_two_publishers(tf2_env):
    rows = [[p, c, [float(v) for v in t], [float(v) for v in q]] for p, c, t, q in ROBOT]
    groups = [rows[:1], rows[1:]]           # base -> camera_link, and the camera's own frames
    out = subprocess.run([sys.executable, '-c', READER, json.dumps(groups), 'base_link',
                          'camera_left_optical_frame'], env=with_env(node_env(), tf2_env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got['available'] and not got['before']     # None until /tf_static has arrived
    assert got['R'] is not None, 'the static transforms never arrived'
    assert_pose((np.array(got['R']), np.array(got['t'])),
                EDGE['camera_link'] @ EDGE['camera_left_optical_frame'])
