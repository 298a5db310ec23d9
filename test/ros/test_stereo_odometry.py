"""stereo_odometry mode through the pipeline: metric relative poses, the chained odometry,
resets, each image encoded once, and the replay giving the node's odometry.

Oracle: :class:`oracle_matchers.StereoTrajectory`, a stereo rig on a curved 24-frame path
(0.2 m and 0.6 deg of yaw a frame) over a surface with relief; the oracle matcher returns the
warp between any two of its tagged images with 0.2 px of Gaussian noise (which its
covariance declares), so the stereo depth and the temporal matches are both noisy.
"""
import cv2
import numpy as np
import pytest

import oracle_matchers as om
from romav2_ros import bag_io, replay
from romav2_ros.pipeline import InputError, MatchingPipeline, PipelineConfig, mode_outputs

WANTED = {'odometry', 'relative_pose', 'relative_pose_info', 'depth', 'matches', 'tf'}
NOISE_PX = 0.2


def quat_to_R(q):
    x, y, z, w = q.x, q.y, q.z, q.w
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def angle_deg(R):
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(R)[0])))


def vec(p):
    return np.array([p.x, p.y, p.z])


@pytest.fixture(scope='module')
def run():
    scene = om.StereoTrajectory()
    matcher = om.TrajectoryOracle(scene, noise_px=NOISE_PX)
    pipe = MatchingPipeline(matcher, PipelineConfig(mode='stereo_odometry'))
    results = [pipe.process(scene.inputs(k), WANTED) for k in range(scene.frames)]
    return scene, matcher, results


def test_each_image_is_encoded_once_and_both_pairs_share_a_batch(run):
    scene, matcher, results = run
    assert matcher.encoded == 2 * scene.frames            # left and right of every frame
    assert matcher.match_calls == scene.frames            # stereo + temporal in one call
    assert results[0].odometry_state == 'RESET' and 'odometry' not in results[0].messages
    assert 'depth' in results[0].messages                 # the first frame's stereo outputs


def test_relative_poses_are_metric_and_accurate(run):
    """Per frame: translation error < 1 % of the motion, rotation error < 0.1 deg."""
    scene, _, results = run
    t_err, r_err = [], []
    for k in range(1, scene.frames):
        res = results[k]
        msg = res.messages['relative_pose']
        # stamped and framed as the frame it is expressed in: the left camera at k-1
        assert msg.header.stamp == scene.stamp(k - 1) and msg.header.frame_id == 'left_optical'
        R_true, t_true = scene.relative(k)
        R = quat_to_R(msg.pose.pose.orientation)
        t = vec(msg.pose.pose.position)
        t_err.append(np.linalg.norm(t - t_true) / np.linalg.norm(t_true))
        r_err.append(angle_deg(R @ R_true.T))
        info = res.messages['relative_pose_info']
        assert info.scale_observable and info.header.stamp == scene.stamp(k)
        assert info.stamp_b == scene.stamp(k - 1)
        assert info.mean_reprojection_error < 3 * NOISE_PX
        assert np.isnan(info.mean_epipolar_error)
        cov = np.array(msg.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 0
        # metric: no huge variance along t as the monocular poses have
        assert np.linalg.eigvalsh(cov).max() < 1e-2
    print(f'relative translation error max {max(t_err):.2e} mean {np.mean(t_err):.2e}, '
          f'rotation max {max(r_err):.2e} deg mean {np.mean(r_err):.2e} deg')
    assert max(t_err) < 0.01 and max(r_err) < 0.1


def test_odometry_follows_the_trajectory(run):
    """Chained poses in the odom frame (left camera 0) against the truth; the absolute
    trajectory error after 20 frames is reported."""
    scene, _, results = run
    errors = []
    for k in range(1, scene.frames):
        odo = results[k].messages['odometry']
        assert odo.header.frame_id == 'odom' and odo.child_frame_id == 'left_optical'
        assert odo.header.stamp == scene.stamp(k)
        R_true, p_true = scene.in_odom(k)
        errors.append(np.linalg.norm(vec(odo.pose.pose.position) - p_true))
        assert angle_deg(quat_to_R(odo.pose.pose.orientation) @ R_true.T) < 0.05 * k
        cov = np.array(odo.pose.covariance).reshape(6, 6)
        assert np.linalg.eigvalsh(cov).min() > 0
        tw = np.array(odo.twist.covariance).reshape(6, 6)
        assert np.linalg.eigvalsh(tw).min() > 0
        # twist: the step over 0.1 s, in the camera frame at k
        R_rel, t_rel = scene.relative(k)
        np.testing.assert_allclose(vec(odo.twist.twist.linear), R_rel.T @ t_rel / 0.1,
                                   atol=0.01 * np.linalg.norm(t_rel) / 0.1)
        tf = results[k].transform
        assert tf.header.frame_id == 'odom' and tf.child_frame_id == 'left_optical'
        assert vec(tf.transform.translation) == pytest.approx(vec(odo.pose.pose.position))
    length = sum(np.linalg.norm(scene.relative(k)[1]) for k in range(1, 21))
    ate20 = float(np.sqrt(np.mean(np.square(errors[:20]))))
    print(f'ATE (RMS) over 20 frames: {ate20 * 1e3:.2f} mm on a {length:.2f} m path')
    assert ate20 < 0.005 * length
    # the orientation uncertainty only grows along the chain
    traces = [np.trace(np.array(r.messages['odometry'].pose.covariance).reshape(6, 6)[3:, 3:])
              for r in results[1:]]
    assert all(b > a for a, b in zip(traces, traces[1:]))


def test_resets_start_a_new_segment_and_never_chain_a_failure():
    scene = om.StereoTrajectory(frames=8)
    pipe = MatchingPipeline(om.TrajectoryOracle(scene), PipelineConfig(mode='stereo_odometry'))
    states = []
    for k in range(8):
        msgs = scene.inputs(k)
        if k == 3:                       # a bad input: refused, and the segment ends
            msgs[0].encoding = 'nv21'
        try:
            res = pipe.process(msgs, WANTED)
        except InputError:
            states.append('bad')
            continue
        states.append(res.odometry_state)
    assert states == ['RESET', 'OK', 'OK', 'bad', 'RESET', 'OK', 'OK', 'OK']


def test_replay_with_batches_gives_the_same_odometry(tmp_path):
    """The bag path (romav2-replay, --batch 1 and --batch 4) gives the pipeline's odometry."""
    from rosbags.rosbag2 import Writer  # noqa: F401 (bag_io wraps it)
    scene = om.StereoTrajectory(frames=10)
    bag = tmp_path / 'seq'
    with bag_io.BagWriter(bag) as writer:
        for k in range(scene.frames):
            for topic, msg in zip(('/stereo/left/image_rect', '/stereo/left/camera_info',
                                   '/stereo/right/image_rect', '/stereo/right/camera_info'),
                                  scene.inputs(k)):
                writer.write(topic, msg, bag_io_stamp(msg))
    live = MatchingPipeline(om.TrajectoryOracle(scene), PipelineConfig(mode='stereo_odometry'))
    want = [live.process(scene.inputs(k), {'odometry'}).messages.get('odometry')
            for k in range(scene.frames)]
    for batch in (1, 4):
        out = tmp_path / f'out{batch}'
        args = replay.parse_args([str(bag), str(out), '--mode', 'stereo_odometry',
                                  '--outputs', 'odometry', '--batch', str(batch),
                                  '--trajectory', str(tmp_path / f'traj{batch}.txt')])
        assert replay.replay(args, matcher=om.TrajectoryOracle(scene)) == 0
        with bag_io.open_reader(out) as reader:
            got = [bag_io.deserialize(raw, c.msgtype)
                   for c, _, raw in bag_io.read_messages(reader, reader.connections)]
        assert len(got) == scene.frames - 1
        for g, w in zip(got, want[1:]):
            assert g.header.stamp == w.header.stamp
            np.testing.assert_allclose(vec(g.pose.pose.position), vec(w.pose.pose.position),
                                       atol=1e-9)
            np.testing.assert_allclose(g.pose.covariance, w.pose.covariance, rtol=1e-9,
                                       atol=1e-15)
        # the TUM file: 'timestamp tx ty tz qx qy qz qw', one line per odometry message
        rows = np.loadtxt(tmp_path / f'traj{batch}.txt', comments='#')
        assert rows.shape == (scene.frames - 1, 8)
        for row, w in zip(rows, want[1:]):
            p, q = w.pose.pose.position, w.pose.pose.orientation
            assert row[0] == pytest.approx(w.header.stamp.sec + w.header.stamp.nanosec * 1e-9)
            np.testing.assert_allclose(row[1:], [p.x, p.y, p.z, q.x, q.y, q.z, q.w], atol=1e-8)
        picture = cv2.imread(str(tmp_path / f'traj{batch}.png'))
        assert picture.shape == (640, 640, 3) and (picture < 250).any()


def bag_io_stamp(msg) -> int:
    from romav2_ros.messages import stamp_ns
    return stamp_ns(msg.header.stamp)


def test_mode_outputs():
    assert 'odometry' in mode_outputs('stereo_odometry')
    assert 'odometry' not in mode_outputs('stereo') + mode_outputs('sequential')
