"""Two processes, ``mode:=stereo_odometry``: ~/odometry once per frame after the first, SPD
covariances, left stamps and the documented frames; TF on /tf (tf2_msgs/TFMessage); and the
replay of the same input giving the same odometry as the live node.
"""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image

import oracle_matchers as om
from node_harness import TF_LISTENER, NodeProcess, node_env, with_env
from romav2_ros import bag_io, replay
from romav2_ros.messages import stamp_ns

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures('ros_env_guard')]
FRAMES = 6
TOPICS = ('/left/image_rect', '/left/camera_info', '/right/image_rect', '/right/camera_info')
def vec(p):
    return np.array([p.x, p.y, p.z])


def test_odometry_and_tf_between_processes_and_replay_agrees(tester, tmp_path, tf2_env):
    scene = om.StereoTrajectory(frames=FRAMES)
    node = NodeProcess({'mode': 'stereo_odometry', 'model_source': 'oracle_matchers:stereo_odometry',
                        'publish_tf': True, 'input_qos': 'reliable', 'output_qos_depth': 20,
                        'viz_rate': 0.0}, tmp_path / 'node.log', env=tf2_env)
    listener = subprocess.Popen([sys.executable, '-c', TF_LISTENER, str(tmp_path / 'tf.jsonl'),
                                 '60'], env=with_env(node_env(), tf2_env))
    try:
        qos = tester.reliable(10)
        pubs = [tester.publisher(Image if 'image' in t else CameraInfo, t, qos) for t in TOPICS]
        tester.record(Odometry, '/romav2_node/odometry', 'odometry')
        tester.record_diagnostics()
        tester.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60,
                          'the node')
        # the node's odometry publisher matched us, its /tf broadcaster the listener
        tester.wait_node_subscribers(['odometry', 'tf'])
        for k in range(FRAMES):
            for pub, msg in zip(pubs, scene.inputs(k)):
                pub.publish(msg)
            if k:
                tester.spin_until(lambda: len(tester.received['odometry']) == k, 60,
                                  f'odometry of frame {k}')
            else:
                tester.spin_until(lambda: tester.diag_values(': input').get('synchronized') ==
                                  '1' and tester.diag_values(': input').get('queue_depth') ==
                                  '0', 30, 'frame 0 taken')
        tester.spin_for(1.5)
        odo = tester.received['odometry']
        assert [m.header.stamp for m in odo] == [scene.stamp(k) for k in range(1, FRAMES)]
        for k, m in enumerate(odo, start=1):
            assert (m.header.frame_id, m.child_frame_id) == ('odom', 'left_optical')
            for cov in (m.pose.covariance, m.twist.covariance):
                c = np.array(cov).reshape(6, 6)
                np.testing.assert_allclose(c, c.T)
                assert np.linalg.eigvalsh(c).min() > 0
            np.testing.assert_allclose(vec(m.pose.pose.position), scene.in_odom(k)[1],
                                       atol=1e-3)
        status = tester.diag_values(': odometry')
        assert status['tracking'] == 'OK' and float(status['inlier_ratio']) > 0.9
    finally:
        rc = node.stop(signal.SIGINT)
        listener.terminate()
        listener.wait(10)
    assert rc == 0, node.output()
    tf = [json.loads(line) for line in (tmp_path / 'tf.jsonl').read_text().splitlines()]
    assert [(f, c) for f, c, *_ in tf] == [('odom', 'left_optical')] * (FRAMES - 1)
    for (_, _, sec, nsec, *xyz), m in zip(tf, odo):
        assert (sec, nsec) == (m.header.stamp.sec, m.header.stamp.nanosec)
        np.testing.assert_allclose(xyz, vec(m.pose.pose.position), atol=1e-9)

    # The same input through the bag path gives the same odometry.
    bag = tmp_path / 'in'
    with bag_io.BagWriter(bag) as writer:
        for k in range(FRAMES):
            for topic, msg in zip(('/stereo/left/image_rect', '/stereo/left/camera_info',
                                   '/stereo/right/image_rect', '/stereo/right/camera_info'),
                                  scene.inputs(k)):
                writer.write(topic, msg, stamp_ns(msg.header.stamp))
    args = replay.parse_args([str(bag), str(tmp_path / 'out'), '--mode', 'stereo_odometry',
                              '--outputs', 'odometry', '-p',
                              'model_source:=oracle_matchers:stereo_odometry'])
    assert replay.replay(args) == 0
    with bag_io.open_reader(tmp_path / 'out') as reader:
        replayed = [bag_io.deserialize(raw, c.msgtype)
                    for c, _, raw in bag_io.read_messages(reader, reader.connections)]
    assert len(replayed) == len(odo)
    for r, m in zip(replayed, odo):
        assert r.header == m.header and r.child_frame_id == m.child_frame_id
        np.testing.assert_allclose(vec(r.pose.pose.position), vec(m.pose.pose.position),
                                   atol=1e-12)
        np.testing.assert_allclose(r.pose.covariance, m.pose.covariance, rtol=1e-9, atol=1e-18)
        np.testing.assert_allclose(r.twist.covariance, m.twist.covariance, rtol=1e-9,
                                   atol=1e-18)
