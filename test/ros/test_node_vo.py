"""stereo_odometry as users run it: the node with config/stereo_odometry.yaml (default outputs:
every topic subscribed, pictures included), the robot's camera mount from /tf_static
(base_frame), TF ``odom -> base_link`` received by another process; and the README's replay
command (default outputs, --trajectory) on the same input with /tf_static in the bag, scored
with evo. The scene: test/vo_scenes.py's covered_lens (a rig pitched 15 deg down on a robot;
frames 59-61 cannot be matched).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image

import vo_eval
import vo_scenes
from node_harness import ROOT, TF_LISTENER, NodeProcess, Tester, node_env, with_env
from romav2_ros import bag_io, replay
from romav2_ros.messages import output_type, stamp_ns
from romav2_ros.pipeline import mode_outputs

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures('ros_env_guard')]
FRAMES = range(50, 66)
COVERED = {59, 60, 61}
TOPICS = ('/left/image_rect', '/left/camera_info', '/right/image_rect', '/right/camera_info')
#: a static publisher (a robot's robot_state_publisher)
STATIC = textwrap.dedent('''
    import json, sys, time, rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage
    rclpy.init()
    node = rclpy.create_node('robot_state_publisher')
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(TFMessage, '/tf_static', qos)
    msg = TFMessage()
    for parent, child, (x, y, z, qx, qy, qz, qw) in json.loads(sys.argv[1]):
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = parent, child
        t.transform.translation.x, t.transform.translation.y = x, y
        t.transform.translation.z = z
        r = t.transform.rotation
        r.x, r.y, r.z, r.w = qx, qy, qz, qw
        msg.transforms.append(t)
    pub.publish(msg)
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
''')


def static_transforms(scene) -> list:
    """base_link -> camera_link -> left_optical: the mount in two hops, as a URDF has it."""
    link = [0.2, 0.0, 0.6, 0.0, 0.0, 0.0, 1.0]                 # camera_link in base_link
    T_link = np.eye(4)
    T_link[:3, 3] = link[:3]
    rest = np.linalg.inv(T_link) @ scene.mount                 # left_optical in camera_link
    q = Rotation.from_matrix(rest[:3, :3]).as_quat()
    return [('base_link', 'camera_link', link),
            ('camera_link', 'left_optical', [*rest[:3, 3], *q])]


def test_stereo_odometry_with_its_defaults_a_mount_from_tf_static_and_tf(tmp_path, tf2_env):
    scene = vo_scenes.scene('covered_lens')
    env = with_env(node_env(), tf2_env)
    static = subprocess.Popen([sys.executable, '-c', STATIC,
                               json.dumps(static_transforms(scene)), '120'], env=env)
    listener = subprocess.Popen([sys.executable, '-c', TF_LISTENER, str(tmp_path / 'tf.jsonl'),
                                 '120'], env=env)
    node = NodeProcess({'model_source': 'vo_scenes:covered_lens', 'base_frame': 'base_link',
                        'publish_tf': True, 'max_stamp_jump': 5.0},
                       tmp_path / 'node.log', env=tf2_env,
                       params_file=ROOT / 'config' / 'stereo_odometry.yaml')
    tester = Tester()
    try:
        outputs = mode_outputs('stereo_odometry')
        pubs = [tester.publisher(Image if 'image' in t else CameraInfo, t, tester.reliable(10))
                for t in TOPICS]
        for key in outputs:
            tester.record(output_type(key), f'/romav2_node/{key}', key)
        tester.record_diagnostics()
        tester.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60,
                          'the node')
        tester.wait_node_subscribers(list(outputs) + ['tf'])
        for k in FRAMES:
            for pub, msg in zip(pubs, scene.inputs(k)):
                pub.publish(msg)
            tester.spin_until(lambda: tester.diag_values(': input').get('synchronized') ==
                              str(k - FRAMES[0] + 1), 30, f'frame {k} synchronised')
            if k > FRAMES[0]:
                tester.spin_until(lambda: len(tester.received['odometry']) == k - FRAMES[0],
                                  60, f'the odometry of frame {k}')
            tester.spin_for(0.3)
        tester.spin_for(1.5)
        got = tester.received
        odometry = got['odometry']
        assert [m.header.stamp for m in odometry] == [scene.stamp(k) for k in FRAMES[1:]]
        assert {(m.header.frame_id, m.child_frame_id) for m in odometry} == \
            {('odom', 'base_link')}
        truth = np.linalg.inv(scene.body[FRAMES[0]]) @ scene.body      # base in odom
        for k, m in zip(FRAMES[1:], odometry):
            if k not in COVERED:
                np.testing.assert_allclose(vo_eval.pose_matrix(m.pose.pose)[:3, 3], truth[k][:3, 3],
                                           atol=0.02)
        for key in outputs:          # every output came out, the pictures at viz_rate
            assert got[key], f'no {key}'
        state = {stamp_ns(m.header.stamp): m.tracking_state for m in got['relative_pose_info']}
        assert [state[stamp_ns(scene.stamp(k))] for k in sorted(COVERED)] == ['LOST'] * 3
        assert state[stamp_ns(scene.stamp(62))] == "OK"
    finally:
        tester.close()
        rc = node.stop()
        static.terminate()
        listener.terminate()
        static.wait(10)
        listener.wait(10)
    assert rc == 0, node.output()
    tf = [json.loads(line) for line in (tmp_path / 'tf.jsonl').read_text().splitlines()]
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in odometry}
    assert tf and {(f, c) for f, c, *_ in tf} == {('odom', 'base_link')}
    assert {(sec, nsec) for _, _, sec, nsec, *_ in tf} <= stamps
    assert len(tf) >= len(FRAMES) - 1 - len(COVERED)        # not broadcast while lost


def test_the_readmes_replay_command_with_default_outputs_and_the_bags_tf_static(tmp_path):
    """``romav2-replay IN OUT --mode stereo_odometry --trajectory odometry.txt`` (default
    outputs: every one, pictures included) with base_frame: the mount comes from the bag's
    /tf_static; evo scores the TUM file against the body's truth."""
    scene = vo_scenes.scene('covered_lens')
    store = bag_io.typestore()
    Msg = store.types
    bag = tmp_path / 'in'
    with bag_io.BagWriter(bag) as writer:
        transforms = []
        for parent, child, (x, y, z, qx, qy, qz, qw) in static_transforms(scene):
            transforms.append(Msg['geometry_msgs/msg/TransformStamped'](
                header=Msg['std_msgs/msg/Header'](
                    stamp=Msg['builtin_interfaces/msg/Time'](sec=0, nanosec=0),
                    frame_id=parent),
                child_frame_id=child,
                transform=Msg['geometry_msgs/msg/Transform'](
                    translation=Msg['geometry_msgs/msg/Vector3'](x=x, y=y, z=z),
                    rotation=Msg['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))))
        raw = store.serialize_cdr(Msg['tf2_msgs/msg/TFMessage'](transforms=transforms),
                                  'tf2_msgs/msg/TFMessage')
        writer.write_raw('/tf_static', 'tf2_msgs/msg/TFMessage', stamp_ns(scene.stamp(0)), raw)
        for k in FRAMES:
            for topic, msg in zip(('/stereo/left/image_rect', '/stereo/left/camera_info',
                                   '/stereo/right/image_rect', '/stereo/right/camera_info'),
                                  scene.inputs(k)):
                writer.write(topic, msg, stamp_ns(msg.header.stamp))
    trajectory = tmp_path / 'odometry.txt'
    status = replay.main([str(bag), str(tmp_path / 'out'), '--mode', 'stereo_odometry',
                          '--trajectory', str(trajectory),
                          '-p', 'model_source:=vo_scenes:covered_lens',
                          '-p', 'base_frame:=base_link'])
    assert status == 0
    with bag_io.open_reader(tmp_path / 'out') as reader:
        topics = {c.topic.rsplit('/', 1)[-1] for c in reader.connections}
    assert topics == set(mode_outputs('stereo_odometry'))
    truth = np.linalg.inv(scene.body[FRAMES[0]]) @ scene.body[FRAMES[0]:FRAMES[-1] + 1]
    score = vo_eval.score((scene.stamp_s(np.array(FRAMES)), truth), trajectory, rpe_delta_m=1)
    # the tracked frames only: the poses held while lost are no estimates
    assert score.poses == len(FRAMES) - 1 - len(COVERED) and score.ape_rmse_m < 0.02, score
    assert os.path.exists(trajectory.with_suffix('.png'))
