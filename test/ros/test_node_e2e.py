"""Two-process tests of the installed romav2_node (real rclpy, private network namespace).

Run through scripts/run_tests.sh (the ``ros_env_guard`` fixture refuses anything else).
"""
import signal
import time

import numpy as np
import psutil
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

import oracle_matchers as om
from node_harness import NodeProcess, Tester
from oracle_matchers import direction_error_deg, rotation_error_deg
from romav2_ros.msg import RelativePose, SampledMatches
from romav2_ros.image_conversion import imgmsg_to_numpy

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures('ros_env_guard')]

TYPES = {'warp': Image, 'certainty': Image, 'covariance': Image, 'disparity': DisparityImage,
         'depth': Image, 'depth_stddev': Image, 'points2': PointCloud2,
         'matches': SampledMatches, 'relative_pose': PoseWithCovarianceStamped,
         'relative_pose_info': RelativePose, 'matches_viz': Image, 'warp_viz': Image,
         'covariance_viz': Image}
STEREO_ONLY = ('disparity', 'depth', 'depth_stddev', 'points2')
LAYOUT = {'warp': ('32FC2', om.W, 8 * om.W), 'certainty': ('32FC1', om.W, 4 * om.W),
          'covariance': ('32FC3', om.W, 12 * om.W), 'matches_viz': ('rgb8', 2 * om.W, 6 * om.W),
          'warp_viz': ('rgb8', 2 * om.W, 6 * om.W), 'covariance_viz': ('rgb8', om.W, 3 * om.W)}
STEREO_LAYOUT = {'depth': ('32FC1', om.W, 4 * om.W), 'depth_stddev': ('32FC1', om.W, 4 * om.W)}
THRESHOLD = 0.05
BASE_PARAMS = {'viz_rate': 0.0, 'output_qos_depth': 10, 'certainty_threshold': THRESHOLD}


def stamp(k: int) -> Time:
    return Time(sec=100 + k // 10, nanosec=(k % 10) * 100_000_000)


def wait_connected(t: Tester, pubs, keys):
    """Our input publishers matched the node's subscriptions, and the node's output
    publishers ``keys`` matched ours (it publishes only to listeners)."""
    t.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60, 'the node')
    t.wait_node_subscribers(keys)


def subscribe_outputs(t: Tester, keys):
    for key in keys:
        t.record(TYPES[key], f'/romav2_node/{key}', key)
    t.record_diagnostics()


def output_stamp(key: str, k: int, sequential: bool) -> Time:
    """The stamp of pair k's output: A's, except ~/relative_pose, which is stamped with B's
    (the frame it is expressed in): frame k-1 in sequential mode."""
    return stamp(k - 1 if sequential and key == 'relative_pose' else k)


def wait_outputs(t: Tester, keys, k: int, timeout=60, sequential=False):
    t.spin_until(lambda: all(any(m.header.stamp == output_stamp(key, k, sequential)
                                 for m in t.received[key]) for key in keys),
                 timeout, f'outputs of pair {k}')


def check_outputs(t: Tester, keys, n_pairs: int, first: int, R, tvec, sequential=False):
    """Exactly one output per pair and topic, documented layout, finite where certain."""
    for key in keys:
        assert [m.header.stamp for m in t.received[key]] == \
            [output_stamp(key, k, sequential) for k in range(first, first + n_pairs)], key
    for k in range(n_pairs):
        for key, (enc, width, step) in LAYOUT.items():
            m = t.received[key][k]
            assert (m.encoding, m.width, m.step) == (enc, width, step), key
            assert m.height == om.H
        warp = imgmsg_to_numpy(t.received['warp'][k])
        certainty = imgmsg_to_numpy(t.received['certainty'][k])
        cov = imgmsg_to_numpy(t.received['covariance'][k])
        v, u = np.mgrid[0:om.H, 0:om.W]
        truth = om.warp_px(u.astype(float), v.astype(float), R, tvec)
        inside = (truth[..., 0] > 2) & (truth[..., 0] < om.W - 3) & (truth[..., 1] > 2) & \
            (truth[..., 1] < om.H - 3)
        certain = (certainty > THRESHOLD) & inside
        assert certain.mean() > 0.5
        assert np.isfinite(warp[certain]).all() and np.isfinite(cov[certain]).all()
        pose = t.received['relative_pose'][k]
        assert rotation_error_deg(pose.pose.pose.orientation, R) < 1.0
        assert direction_error_deg(pose.pose.pose.position, tvec) < 1.0
        c = np.array(pose.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(c, c.T)
        assert np.linalg.eigvalsh(c).min() > 0


def test_stereo_one_output_per_pair(tester, tmp_path):
    """Best-effort (sensor_data) inputs of 640 x 480 pairs through the Fast DDS profile."""
    node = NodeProcess({'mode': 'stereo', 'model_source': 'oracle_matchers:stereo',
                        **BASE_PARAMS}, tmp_path / 'node.log')
    try:
        from rclpy.qos import qos_profile_sensor_data
        topics = ('left/image_rect', 'left/camera_info', 'right/image_rect',
                  'right/camera_info')
        pubs = [tester.publisher(Image if 'image' in tp else CameraInfo, '/' + tp,
                                 qos_profile_sensor_data) for tp in topics]
        keys = list(TYPES)
        subscribe_outputs(tester, keys)
        wait_connected(tester, pubs, keys)
        n_pairs = 3
        for k in range(n_pairs):
            for pub, msg in zip(pubs, om.stereo_inputs(stamp(k), seed=k)):
                pub.publish(msg)
            wait_outputs(tester, keys, k)
        tester.spin_for(1.0)
        check_outputs(tester, keys, n_pairs, 0, om.STEREO_R, om.STEREO_T)
        for k, d in enumerate(tester.received['disparity']):
            assert d.header.frame_id == 'left_optical'
            assert d.f == pytest.approx(om.FOCAL) and d.t == pytest.approx(om.BASELINE)
        # REP 118 depth and its uncertainty: 32FC1 metres of the left image; the organised
        # cloud as stereo_image_proc's (x y z rgb float32, 16 bytes a point)
        for k in range(n_pairs):
            for key, (enc, width, step) in STEREO_LAYOUT.items():
                m = tester.received[key][k]
                assert (m.encoding, m.width, m.step, m.height) == (enc, width, step, om.H), key
                assert m.header.frame_id == 'left_optical'
            z = imgmsg_to_numpy(tester.received['depth'][k])
            v, u = np.mgrid[0:om.H, 0:om.W]
            inner = np.isfinite(z)
            inner[:4], inner[-4:], inner[:, :4], inner[:, -4:] = False, False, False, False
            assert inner.mean() > 0.5
            np.testing.assert_allclose(z[inner], om.depth(u, v)[inner], rtol=2e-3)
            assert np.isfinite(imgmsg_to_numpy(tester.received['depth_stddev'][k])[inner]).all()
            cloud = tester.received['points2'][k]
            assert (cloud.height, cloud.width, cloud.point_step, cloud.is_dense) == \
                (om.H, om.W, 16, False)
            assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == \
                [('x', 0, 7), ('y', 4, 7), ('z', 8, 7), ('rgb', 12, 7)]
        assert tester.received['relative_pose'][0].header.frame_id == 'right_optical'
        assert tester.received['relative_pose_info'][0].frame_id_b == 'right_optical'
    finally:
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.output()


def test_sequential_with_runtime_parameters(tester, tmp_path):
    """Reliable inputs; K+1 frames give K outputs; certainty_threshold changes at runtime."""
    node = NodeProcess({'mode': 'sequential', 'model_source': 'oracle_matchers:sequential',
                        'input_qos': 'reliable', **BASE_PARAMS}, tmp_path / 'node.log')
    try:
        qos = tester.reliable(10)
        pub_img = tester.publisher(Image, '/image', qos)
        pub_info = tester.publisher(CameraInfo, '/camera_info', qos)
        keys = [k for k in TYPES if k not in STEREO_ONLY]
        subscribe_outputs(tester, keys)
        wait_connected(tester, [pub_img, pub_info], keys)
        n_pairs = 3
        frames = om.sequence_frames(n_pairs + 2)
        for k in range(n_pairs + 1):
            pub_img.publish(om.image_msg(frames[k], 'cam_optical', stamp(k)))
            pub_info.publish(om.camera_info('cam_optical', stamp(k)))
            if k == 0:  # the node must have taken frame 0 before frame 1 replaces it
                tester.spin_until(lambda: tester.diag_values(': input').get(
                    'synchronized') == '1' and tester.diag_values(': input').get(
                    'queue_depth') == '0', 20, 'frame 0 taken by the worker')
            else:
                wait_outputs(tester, keys, k, sequential=True)
        tester.spin_for(1.0)
        check_outputs(tester, keys, n_pairs, 1, om.SEQ_R, om.SEQ_T, sequential=True)
        assert tester.received['relative_pose'][0].header.frame_id == 'cam_optical'
        assert tester.received['relative_pose_info'][0].stamp_b == stamp(0)

        nan_before = np.isnan(imgmsg_to_numpy(tester.received['warp'][-1])).mean()
        result = tester.set_parameter('certainty_threshold', 0.6)
        assert result.successful
        k = n_pairs + 1
        pub_img.publish(om.image_msg(frames[k], 'cam_optical', stamp(k)))
        pub_info.publish(om.camera_info('cam_optical', stamp(k)))
        wait_outputs(tester, ['warp'], k)
        nan_after = np.isnan(imgmsg_to_numpy(tester.received['warp'][-1])).mean()
        assert nan_after > nan_before + 0.3

        rejected = tester.set_parameter('certainty_threshold', 1.5)
        assert not rejected.successful and 'range' in rejected.reason.lower()
        read_only = tester.set_parameter('setting', 'turbo')
        assert not read_only.successful
    finally:
        rc = node.stop(signal.SIGTERM)
    assert rc == 0, node.output()


def test_bad_inputs_are_logged_counted_and_survived(tester, tmp_path):
    node = NodeProcess({'mode': 'stereo', 'model_source': 'oracle_matchers:stereo',
                        'input_qos': 'reliable', **BASE_PARAMS}, tmp_path / 'node.log')
    try:
        qos = tester.reliable(10)
        topics = ('left/image_rect', 'left/camera_info', 'right/image_rect',
                  'right/camera_info')
        pubs = [tester.publisher(Image if 'image' in tp else CameraInfo, '/' + tp, qos)
                for tp in topics]
        subscribe_outputs(tester, ['warp', 'relative_pose'])
        wait_connected(tester, pubs, ['warp'])

        def broken(k, how):
            left, li, right, ri = om.stereo_inputs(stamp(k))
            if how == 'unsupported_encoding':
                left.encoding = 'nv21'
            elif how == 'zero_size':
                left.height = left.width = left.step = 0
                left.data = b''
            elif how == 'size_mismatch':
                right.height, right.data = om.H // 2, bytes(right.data)[:len(right.data) // 2]
            elif how == 'uncalibrated':
                li.k = [0.0] * 9
            elif how == 'nan_camera_info':
                ri.p = [float('nan')] * 12
            return left, li, right, ri

        cases = [(1, None), (2, 'unsupported_encoding'), (3, 'zero_size'),
                 (4, 'size_mismatch'), (5, 'uncalibrated'), (6, 'nan_camera_info'),
                 (7, None), (5, 'late_input'), (8, None)]
        synchronised = 0
        for k, how in cases:
            for pub, msg in zip(pubs, broken(k, how)):
                pub.publish(msg)
            if how == 'late_input':   # older than the last set: the synchroniser drops it
                tester.spin_until(lambda: tester.diag_values(': input').get(
                    'bad_input.late_input') == '1', 30, 'the late set dropped')
                continue
            synchronised += 1
            tester.spin_until(lambda: tester.diag_values(': input').get('synchronized') ==
                              str(synchronised), 30, f'case {k} ({how}) synchronised')
        wait_outputs(tester, ['warp'], 8)
        tester.spin_for(1.5)  # one more diagnostics period
        warp_stamps = [m.header.stamp for m in tester.received['warp']]
        assert warp_stamps == [stamp(k) for k in (1, 5, 7, 8)]  # uncalibrated: dense only
        pose_stamps = [m.header.stamp for m in tester.received['relative_pose']]
        assert pose_stamps == [stamp(k) for k in (1, 7, 8)]
        counts = tester.diag_values(': input')
        log = node.output()
        for code in ('unsupported_encoding', 'zero_size', 'size_mismatch', 'uncalibrated',
                     'nan_camera_info', 'late_input'):
            assert counts.get(f'bad_input.{code}') == '1', (code, counts)
            assert log.count(f'bad input [{code}]') == 1, (code, log)
        assert node.proc.poll() is None
    finally:
        rc = node.stop()
    assert rc == 0, node.output()


def test_latest_only_under_load(tester, tmp_path):
    """30 Hz of 640 x 480 frames into a matcher taking 0.3 s for 10 s: the queue never holds
    more than one set, drops are reported, memory stays flat."""
    node = NodeProcess({'mode': 'sequential', 'model_source': 'oracle_matchers:slow_sequential',
                        'input_qos': 'reliable', **BASE_PARAMS}, tmp_path / 'node.log')
    try:
        qos = tester.reliable(10)
        pub_img = tester.publisher(Image, '/image', qos)
        pub_info = tester.publisher(CameraInfo, '/camera_info', qos)
        subscribe_outputs(tester, ['warp'])
        wait_connected(tester, [pub_img, pub_info], ['warp'])
        proc = psutil.Process(node.proc.pid)
        frames = om.sequence_frames(2)
        rss = []
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < 10.0:
            pub_img.publish(om.image_msg(frames[k % 2], 'cam_optical', stamp(k)))
            pub_info.publish(om.camera_info('cam_optical', stamp(k)))
            k += 1
            if k % 30 == 0:
                rss.append(proc.memory_info().rss)
            tester.spin_for(max(0.0, start + k / 30.0 - time.monotonic()))
        tester.spin_for(2.5)
        values = tester.diag_values(': input')
        assert int(values['queue_depth_max']) <= 1       # both queues before the model
        assert int(values['decoded_depth_max']) <= 1     # hold the latest set only
        dropped = int(values['dropped'])
        processed = int(tester.diag_values(': processing')['processed'])
        assert dropped > k / 3, values
        assert 0 < processed < k / 3
        assert len(tester.received['warp']) == processed
        growth = (max(rss[2:]) - rss[1]) / 2 ** 20
        assert growth < 40, f'RSS grew by {growth:.0f} MiB'
    finally:
        rc = node.stop(signal.SIGTERM)
    assert rc == 0, node.output()


@pytest.mark.parametrize('params,expect', [
    ({'model_source': 'oracle_matchers:missing_weights'}, 'weights:='),
    ({'certainty_threshold': 3.0}, 'certainty_threshold'),
    ({'mode': 'panorama'}, 'mode'),
])
def test_startup_failures_exit_nonzero_with_a_reason(tmp_path, params, expect):
    node = NodeProcess(params, tmp_path / 'node.log')
    rc = node.proc.wait(60)
    node.stop()
    assert rc == 1
    assert expect in node.output()
