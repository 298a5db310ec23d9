"""MatchingPipeline with oracle matchers: outputs, conventions, pose, resets, bad input."""
import numpy as np
import pytest
from builtin_interfaces.msg import Time

import oracle_matchers as om
from oracle_matchers import direction_error_deg, rotation_error_deg
from romav2_ros.image_conversion import imgmsg_to_numpy, numpy_to_compressed
from romav2_ros.pipeline import InputError, MatchingPipeline, PipelineConfig, mode_outputs

ALL = set(mode_outputs('stereo'))
SEQUENTIAL = set(mode_outputs('sequential'))


@pytest.fixture(scope='module')
def stereo_result():
    pipe = MatchingPipeline(om.stereo(), PipelineConfig())
    inputs = om.stereo_inputs(Time(sec=7, nanosec=5))
    return inputs, pipe.process(inputs, ALL)


def test_stereo_outputs_carry_left_header_and_documented_layout(stereo_result):
    (left, _, right, _), res = stereo_result
    assert set(res.messages) == ALL
    for key, msg in res.messages.items():
        header = msg.header
        assert header.stamp == left.header.stamp
        want_frame = right.header.frame_id if key == 'relative_pose' else left.header.frame_id
        assert header.frame_id == want_frame, key
    layout = {'warp': ('32FC2', 8), 'certainty': ('32FC1', 4), 'covariance': ('32FC3', 12),
              'matches_viz': ('rgb8', 3), 'covariance_viz': ('rgb8', 3)}
    for key, (enc, px_bytes) in layout.items():
        m = res.messages[key]
        assert (m.encoding, m.height, m.width, m.step) == (enc, om.H, om.W, om.W * px_bytes) \
            or key == 'matches_viz'
    assert res.messages['matches_viz'].width == 2 * om.W
    assert res.messages['warp_viz'].width == 2 * om.W
    assert set(res.timings) >= {'decode', 'model', 'pose', 'viz'}


def test_stereo_dense_values(stereo_result):
    _, res = stereo_result
    warp = imgmsg_to_numpy(res.messages['warp'])
    certainty = imgmsg_to_numpy(res.messages['certainty'])
    cov = imgmsg_to_numpy(res.messages['covariance'])
    v, u = np.mgrid[0:om.H, 0:om.W].astype(np.float64)
    truth = om.warp_px(u, v, om.STEREO_R, om.STEREO_T)
    valid = np.isfinite(warp).all(axis=2)
    assert valid.mean() > 0.9
    # the model grid is 4x coarser; bilinear upsampling of a smooth warp stays within 0.1 px
    # except within half a grid cell (2 px) of the border, where the edge value is held
    inner = valid.copy()
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    assert np.abs(warp[inner] - truth[inner]).max() < 0.1
    assert np.all((certainty >= 0) & (certainty <= 1))
    assert np.isfinite(cov[valid]).all()
    # 0.25 px^2 of a 160 x 120 grid is 0.25 * 4^2 px^2 of the 640 x 480 image
    np.testing.assert_allclose(cov[valid][:, [0, 2]], 4.0, rtol=1e-5)
    np.testing.assert_allclose(cov[valid][:, 1], 0.0, atol=1e-5)
    disp = res.messages['disparity']
    assert disp.f == pytest.approx(om.FOCAL) and disp.t == pytest.approx(om.BASELINE)
    d = imgmsg_to_numpy(disp.image)
    np.testing.assert_allclose(d[valid], u[valid] - warp[valid][:, 0], atol=1e-3)
    # disparity = f T / Z
    z = om.depth(u, v)
    assert np.abs(d[inner] - om.FOCAL * om.BASELINE / z[inner]).max() < 0.1
    # the configured range (PipelineConfig min/max_disparity), the same every frame, as
    # image_pipeline publishes its search range; every value lies inside it
    cfg = PipelineConfig()
    assert (disp.min_disparity, disp.max_disparity) == (cfg.min_disparity, cfg.max_disparity)
    assert cfg.min_disparity <= np.nanmin(d) and np.nanmax(d) <= cfg.max_disparity


def test_stereo_pose_and_matches(stereo_result):
    (left, _, right, _), res = stereo_result
    pose = res.messages['relative_pose'].pose
    assert rotation_error_deg(pose.pose.orientation, om.STEREO_R) < 1.0
    assert direction_error_deg(pose.pose.position, om.STEREO_T) < 1.0
    cov = np.array(pose.covariance).reshape(6, 6)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0
    info = res.messages['relative_pose_info']
    assert info.frame_id_b == right.header.frame_id and info.stamp_b == right.header.stamp
    assert not info.scale_observable and info.num_inliers > 0.9 * info.num_matches
    m = res.messages['matches']
    n = len(m.certainty)
    assert n == PipelineConfig().num_samples
    assert len(m.points_a) == len(m.points_b) == 2 * n and len(m.covariance_b) == 4 * n
    pa, pb = np.reshape(m.points_a, (-1, 2)), np.reshape(m.points_b, (-1, 2))
    np.testing.assert_allclose(pb, om.warp_px(pa[:, 0], pa[:, 1], om.STEREO_R, om.STEREO_T),
                               atol=1e-3)
    assert (m.width_a, m.height_a, m.width_b, m.height_b) == (om.W, om.H, om.W, om.H)


def test_wanted_limits_work_and_threshold_applies():
    pipe = MatchingPipeline(om.stereo(), PipelineConfig())
    inputs = om.stereo_inputs(Time(sec=1))
    res = pipe.process(inputs, {'certainty'})
    assert set(res.messages) == {'certainty'}
    nan_low = np.isnan(imgmsg_to_numpy(pipe.process(
        om.stereo_inputs(Time(sec=2)), {'warp'}).messages['warp'])).mean()
    pipe.config = pipe.config.replace(certainty_threshold=0.6)  # the ramp is 0.2 -> 1.0
    nan_high = np.isnan(imgmsg_to_numpy(pipe.process(
        om.stereo_inputs(Time(sec=3)), {'warp'}).messages['warp'])).mean()
    assert nan_high > nan_low + 0.4


def test_sequential_encodes_each_frame_once_and_recovers_motion():
    matcher = om.sequential()
    pipe = MatchingPipeline(matcher, PipelineConfig(mode='sequential'))
    frames = om.sequence_frames(3)
    info = om.camera_info('cam', Time())
    results = [pipe.process((om.image_msg(f, 'cam', Time(sec=1, nanosec=k * 10 ** 8)), info),
                            SEQUENTIAL) for k, f in enumerate(frames)]
    assert not results[0].paired and not results[0].messages
    assert all(r.paired for r in results[1:])
    assert matcher.encoded == 3
    for k, res in enumerate(results[1:], start=1):
        pose = res.messages['relative_pose']
        # the pose of the camera at t in the camera frame at t-1, stamped at t-1: a tf2
        # consumer looks the frame up at the time it names
        assert pose.header.stamp == Time(sec=1, nanosec=(k - 1) * 10 ** 8)
        assert pose.header.frame_id == 'cam'
        info_msg = res.messages['relative_pose_info']
        assert info_msg.header.stamp == Time(sec=1, nanosec=k * 10 ** 8)
        assert info_msg.stamp_b == pose.header.stamp
        assert rotation_error_deg(pose.pose.pose.orientation, om.SEQ_R) < 1.0
        assert direction_error_deg(pose.pose.pose.position, om.SEQ_T) < 1.0
        assert res.messages['matches'].stamp_b == Time(sec=1, nanosec=(k - 1) * 10 ** 8)


def test_sequential_stamp_order_and_jumps_reset():
    pipe = MatchingPipeline(om.sequential(), PipelineConfig(mode='sequential',
                                                            max_stamp_jump=5.0))
    img = om.texture()
    info = om.camera_info('cam', Time())

    def run(sec):
        return pipe.process((om.image_msg(img, 'cam', Time(sec=sec)), info), {'warp'}).paired

    assert not run(10)
    assert run(11)
    with pytest.raises(InputError) as err:
        run(11)
    assert err.value.code == 'stamp_out_of_order'
    assert not run(12)                  # restarted after the bad stamp
    assert run(13)
    assert not run(30)                  # a gap over max_stamp_jump restarts
    assert not run(2)                   # a jump back (looped bag) restarts
    assert run(3)


def test_intrinsics_follow_image_resize():
    """camera_info for 1280 x 960 with 640 x 480 images: K and P are scaled by 1/2."""
    pipe = MatchingPipeline(om.stereo(), PipelineConfig())
    left, li, right, ri = om.stereo_inputs(Time(sec=1))
    for info in (li, ri):
        k2 = np.array(info.k).reshape(3, 3)
        p2 = np.array(info.p).reshape(3, 4)
        for M in (k2, p2):
            M[:2] *= 2
            M[:2, 2] += 0.5     # c' = (c + 0.5) * 2 - 0.5
        info.k, info.p = k2.ravel().tolist(), p2.ravel().tolist()
        info.width, info.height = 2 * om.W, 2 * om.H
    res = pipe.process((left, li, right, ri), {'disparity', 'relative_pose'})
    assert res.messages['disparity'].f == pytest.approx(om.FOCAL)
    assert res.messages['disparity'].t == pytest.approx(om.BASELINE)
    pose = res.messages['relative_pose'].pose.pose
    assert direction_error_deg(pose.position, om.STEREO_T) < 1.0


def test_compressed_inputs():
    pipe = MatchingPipeline(om.stereo(), PipelineConfig())
    left, li, right, ri = om.stereo_inputs(Time(sec=1))
    comp = [numpy_to_compressed(imgmsg_to_numpy(m), 'rgb8', 'png', m.header)
            for m in (left, right)]
    raw = pipe.process((left, li, right, ri), {'warp'}).messages['warp']
    res = MatchingPipeline(om.stereo(), PipelineConfig()).process(
        (comp[0], li, comp[1], ri), {'warp'})
    np.testing.assert_array_equal(imgmsg_to_numpy(res.messages['warp']), imgmsg_to_numpy(raw))


def test_uncalibrated_publishes_dense_but_no_pose():
    pipe = MatchingPipeline(om.stereo(), PipelineConfig())
    left, li, right, ri = om.stereo_inputs(Time(sec=1))
    li.k = [0.0] * 9
    res = pipe.process((left, li, right, ri), ALL)
    assert 'warp' in res.messages and 'relative_pose' not in res.messages
    assert any(n.startswith('uncalibrated:') for n in res.notes)


@pytest.mark.parametrize('breakage,code', [
    (lambda l, li, r, ri: setattr(l, 'encoding', 'yuv420'), 'unsupported_encoding'),
    (lambda l, li, r, ri: (setattr(l, 'height', 0), setattr(l, 'data', b'')), 'zero_size'),
    (lambda l, li, r, ri: setattr(ri, 'k', [float('nan')] * 9), 'nan_camera_info'),
    (lambda l, li, r, ri: (setattr(r, 'height', om.H // 2),
                           setattr(r, 'data', bytes(r.data)[:len(r.data) // 2])),
     'size_mismatch'),
    (lambda l, li, r, ri: setattr(l, 'step', l.step + 1), 'step_mismatch'),
])
def test_bad_stereo_input_raises_with_code(breakage, code):
    pipe = MatchingPipeline(om.stereo(), PipelineConfig())
    inputs = om.stereo_inputs(Time(sec=1))
    breakage(*inputs)
    with pytest.raises(InputError) as err:
        pipe.process(inputs, ALL)
    assert err.value.code == code
    # the pipeline keeps working
    assert 'warp' in pipe.process(om.stereo_inputs(Time(sec=2)), ALL).messages


class _MostlyUncertain(om.OracleMatcher):
    """The stereo oracle with certainty 0 on nine cells in ten (inside B, so valid at a
    threshold of 0)."""

    def certainty(self, u, v, a, b):
        return np.where((np.round(u).astype(int) // 4) % 10 == 0, 0.9, 0.0)


def test_certainty_threshold_zero_never_draws_a_zero_certainty_match():
    """certainty_threshold:=0 is accepted; the sampler draws only matches of positive
    certainty (before: numpy's choice raised "Fewer non-zero entries in p than size")."""
    pipe = MatchingPipeline(_MostlyUncertain(om.STEREO_R, om.STEREO_T),
                            PipelineConfig(certainty_threshold=0.0, num_samples=500))
    res = pipe.process(om.stereo_inputs(Time(sec=2)), {'matches', 'relative_pose'})
    m = res.messages['matches']
    assert 0 < len(m.certainty) <= 500 and (np.asarray(m.certainty) > 0.5).all()
    assert 'relative_pose' in res.messages
