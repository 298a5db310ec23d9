"""stereo_odometry mode through the pipeline: metric relative poses, the chained odometry,
resets, each image encoded once, and the replay giving the node's odometry.

Oracle: :class:`oracle_matchers.StereoTrajectory`, a stereo rig on a curved 24-frame path
(0.2 m and 0.6 deg of yaw a frame) over a surface with relief; the oracle matcher returns the
warp between any two of its tagged images with 0.2 px of Gaussian noise (which its
covariance declares), so the stereo depth and the temporal matches are both noisy. Each frame
is matched against its keyframe (``romav2_core.tracking``), which moves on while the rig does.
"""
import cv2
import numpy as np
import pytest
from scipy.stats import chi2

import oracle_matchers as om
from romav2_core.tracking import LOST_VARIANCE
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


def test_relative_poses_are_metric_and_relative_to_a_keyframe(run):
    """Per frame: the pose relative to its keyframe (B), stamped as that keyframe;
    translation error < 1 % of the motion, rotation error < 0.1 deg."""
    scene, _, results = run
    t_err, r_err, keyframes = [], [], set()
    for k in range(1, scene.frames):
        res = results[k]
        msg = res.messages['relative_pose']
        # stamped and framed as the frame it is expressed in: the left camera at the keyframe
        j = scene.index(msg.header.stamp)
        assert j < k and msg.header.frame_id == 'left_optical'
        keyframes.add(j)
        R_true, t_true = scene.relative(k, j)
        R = quat_to_R(msg.pose.pose.orientation)
        t = vec(msg.pose.pose.position)
        t_err.append(np.linalg.norm(t - t_true) / np.linalg.norm(t_true))
        r_err.append(angle_deg(R @ R_true.T))
        info = res.messages['relative_pose_info']
        assert info.scale_observable and info.header.stamp == scene.stamp(k)
        assert info.stamp_b == msg.header.stamp and info.tracking_state == 'OK'
        assert info.mean_reprojection_error < 3 * NOISE_PX
        assert np.isnan(info.mean_epipolar_error)
        cov = np.array(msg.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 0
        # metric: no huge variance along t as the monocular poses have
        assert np.linalg.eigvalsh(cov).max() < 1e-2
    print(f'relative translation error max {max(t_err):.2e} mean {np.mean(t_err):.2e}, '
          f'rotation max {max(r_err):.2e} deg mean {np.mean(r_err):.2e} deg; keyframes '
          f'{sorted(keyframes)}')
    assert max(t_err) < 0.01 and max(r_err) < 0.1
    # moving 0.2 m a frame the keyframe moves on, and every keyframe was announced as one
    announced = {k for k in range(scene.frames) if k == 0 or
                 results[k].messages['relative_pose_info'].new_keyframe}
    assert len(keyframes) > 3 and keyframes <= announced


def test_odometry_follows_the_trajectory(run):
    """Poses in the odom frame (left camera 0) against the truth; the absolute trajectory
    error after 20 frames is reported; the twist agrees with the true step within its own
    covariance."""
    scene, _, results = run
    errors, twist_d2 = [], []
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
        # twist: the step over 0.1 s, in the camera frame at k (linear, angular)
        R_rel, t_rel = scene.relative(k)
        truth = np.r_[R_rel.T @ t_rel, cv2.Rodrigues(R_rel)[0].ravel()] / 0.1
        e = np.r_[vec(odo.twist.twist.linear), vec(odo.twist.twist.angular)] - truth
        twist_d2.append(float(e @ np.linalg.solve(tw, e)))
        tf = results[k].transform
        assert tf.header.frame_id == 'odom' and tf.child_frame_id == 'left_optical'
        assert vec(tf.transform.translation) == pytest.approx(vec(odo.pose.pose.position))
    length = sum(np.linalg.norm(scene.relative(k)[1]) for k in range(1, 21))
    ate20 = float(np.sqrt(np.mean(np.square(errors[:20]))))
    print(f'ATE (RMS) over 20 frames: {ate20 * 1e3:.2f} mm on a {length:.2f} m path; twist '
          f'Mahalanobis^2 max {max(twist_d2):.1f}')
    assert ate20 < 0.005 * length
    # the twist's covariance describes its error (6 DoF): on average within 50 % (23 frames:
    # the mean of chi-square(6) has a standard error of 0.7), and no frame in the far tail
    assert np.mean(twist_d2) < 1.5 * 6 and max(twist_d2) < chi2.ppf(1 - 1e-6, 6)
    # uncertainty grows from keyframe to keyframe, and a frame is never surer than its keyframe
    kf_trace = {0: 0.0}
    for k in range(1, scene.frames):
        info = results[k].messages['relative_pose_info']
        trace = np.trace(np.array(results[k].messages['odometry'].pose.covariance)
                         .reshape(6, 6)[3:, 3:])
        assert trace > kf_trace[info.keyframe_id]
        if info.new_keyframe:
            kf_trace[max(kf_trace) + 1] = trace
    assert list(kf_trace.values()) == sorted(kf_trace.values())


def test_tracking_poses_start_from_the_motion_model(run):
    """A frame with two earlier frames posed against its keyframe starts its refinement from
    the constant-velocity prediction (the rig moves evenly); the first one against a keyframe
    from RANSAC. The accuracy tests above hold for both."""
    scene, _, results = run
    since = {}                  # keyframe stamp -> frames posed against it so far
    seeded = []
    for k in range(1, scene.frames):
        kf = scene.index(results[k].messages['relative_pose'].header.stamp)
        seeded.append((since.get(kf, 0), results[k].odometry_quality['seeded_by']))
        since[kf] = since.get(kf, 0) + 1
    assert all(s == 'ransac' for n, s in seeded if n == 0)
    assert all(s == 'prediction' for n, s in seeded if n >= 2)
    assert {n for n, _ in seeded} >= {0, 2}


def test_a_bad_input_is_a_lost_frame_and_tracking_recovers_against_the_keyframe():
    scene = om.StereoTrajectory(frames=8)
    pipe = MatchingPipeline(om.TrajectoryOracle(scene), PipelineConfig(mode='stereo_odometry'))
    states, infos = [], {}
    for k in range(8):
        msgs = scene.inputs(k)
        if k == 3:                       # a bad input: refused, counted as a lost frame
            msgs[0].encoding = 'nv21'
        try:
            res = pipe.process(msgs, WANTED)
        except InputError:
            states.append('bad')
            continue
        states.append(res.odometry_state)
        infos[k] = res.messages.get('relative_pose_info')
    assert states == ['RESET', 'OK', 'OK', 'bad', 'OK', 'OK', 'OK', 'OK']
    # frame 4 was posed against a keyframe from before the bad frame, in the same segment
    assert scene.index(infos[4].stamp_b) <= 2 and infos[4].segment == 0


def test_a_stamp_jump_starts_a_new_segment_from_the_last_pose():
    """Past max_stamp_jump the motion is unknown: a new segment starts at the last pose with
    the covariance inflated (REP 105: odom continuous, never surer across a gap)."""
    scene = om.StereoTrajectory(frames=8)
    pipe = MatchingPipeline(om.TrajectoryOracle(scene), PipelineConfig(mode='stereo_odometry'))
    out = []
    for k in range(8):
        msgs = scene.inputs(k)
        if k >= 4:                       # 10 s pass between frames 3 and 4
            for m in msgs:
                m.header.stamp.sec += 10
        out.append(pipe.process(msgs, WANTED))
    assert [r.odometry_state for r in out] == ['RESET', 'OK', 'OK', 'OK', 'RESET', 'OK', 'OK',
                                                'OK']
    assert any(n.startswith('stamp_jump') for n in out[4].notes)
    before, after = out[3].messages['odometry'].pose, out[4].messages['odometry'].pose
    assert vec(after.pose.position) == pytest.approx(vec(before.pose.position))
    grown = np.array(after.covariance) - np.array(before.covariance)
    np.testing.assert_allclose(np.diag(grown.reshape(6, 6)), LOST_VARIANCE)
    assert 'relative_pose' not in out[4].messages and out[5].messages['relative_pose_info'] \
        .segment == 1


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
