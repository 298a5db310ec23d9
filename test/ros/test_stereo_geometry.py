"""Stereo geometry through the whole pipeline (messages in, messages out), against oracles.

* The bundled Motorcycle sample (different left/right cx, Middlebury's ``doffs``) with an
  oracle matcher built from its ground-truth disparity, through ``romav2-replay``: the
  DisparityImage contract, REP 118 depth against the benchmark's depth, the point cloud.
* A real rig with rectification rotations (cv2.stereoRectify): the pose in the named frames.
* CameraInfo ROI + binning against the equivalent full-resolution description.
* An anisotropic model grid and covariance, so a swapped axis fails.
* The rectification health check, the per-set parameter snapshot.
"""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from skimage import data

import oracle_matchers as om
from romav2_ros import bag_io, replay
from romav2_ros.diagnostics import Diagnostics
from romav2_ros.image_conversion import imgmsg_to_numpy
from romav2_ros.pipeline import MatchingPipeline, PipelineConfig, mode_outputs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'scripts'))
import make_sample_data  # noqa: E402

STEREO = set(mode_outputs('stereo'))
MC = make_sample_data.MOTORCYCLE


def read_bag(path):
    out = {}
    with bag_io.open_reader(path) as reader:
        for conn, _, raw in bag_io.read_messages(reader, reader.connections):
            out.setdefault(conn.topic, []).append(bag_io.deserialize(raw, conn.msgtype))
    return out


def cloud_xyz_rgb(msg):
    """x y z rgb of a PointCloud2, decoded from its own field table (offsets, float32)."""
    fields = {f.name: f.offset for f in msg.fields}
    assert all(f.datatype == 7 for f in msg.fields) and msg.point_step == 16
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 16)
    take = {n: raw[..., o:o + 4].copy().view('<f4')[..., 0] for n, o in fields.items()}
    return np.stack([take['x'], take['y'], take['z']], -1), take['rgb'].view('<u4')


@pytest.fixture(scope='module')
def motorcycle_replay(tmp_path_factory):
    """The Motorcycle sample bag through romav2-replay with the ground-truth oracle."""
    tmp = tmp_path_factory.mktemp('mc')
    make_sample_data.motorcycle(tmp)
    args = replay.parse_args([str(tmp / 'motorcycle_stereo'), str(tmp / 'out'),
                              '--outputs', 'warp,disparity,depth,depth_stddev,points2',
                              '-p', 'certainty_threshold:=0.5'])
    assert replay.replay(args, matcher=om.middlebury()) == 0
    return read_bag(tmp / 'out'), data.stereo_motorcycle()


def test_disparity_depth_and_points_on_the_motorcycle_sample(motorcycle_replay):
    outputs, (left, _, d_gt) = motorcycle_replay
    node = '/romav2_node'
    warp = imgmsg_to_numpy(outputs[f'{node}/warp'][0])
    disp_msg = outputs[f'{node}/disparity'][0]
    d = imgmsg_to_numpy(disp_msg.image)
    z = imgmsg_to_numpy(outputs[f'{node}/depth'][0])
    h, w = d_gt.shape
    u = np.arange(w)[None, :].astype(np.float64)
    valid = np.isfinite(warp[..., 0])
    with np.errstate(invalid='ignore'):
        seen = np.isfinite(d_gt) & (u - d_gt >= -0.5)      # known, and inside the right image
    np.testing.assert_array_equal(valid, seen)
    cx_l, cx_r = MC['cx'], MC['cx'] + MC['doffs']
    # the DisparityImage definition, on the published numbers
    np.testing.assert_allclose(d[valid], (u - warp[..., 0])[valid] - (cx_l - cx_r), rtol=1e-6)
    np.testing.assert_allclose(z[valid], disp_msg.f * disp_msg.t / d[valid], rtol=1e-6)
    assert disp_msg.f == pytest.approx(MC['f']) and disp_msg.t == pytest.approx(MC['baseline_m'])
    # Middlebury's depth: Z = baseline f / (d + doffs)
    z_gt = MC['baseline_m'] * MC['f'] / (d_gt + MC['doffs'])
    np.testing.assert_allclose(z[valid], z_gt[valid], rtol=1e-3)
    assert np.isnan(z[~valid]).all() and z.dtype == np.float32
    # points2: organised, K^-1 [u v 1] Z in the left optical frame (R = I here), packed rgb
    cloud = outputs[f'{node}/points2'][0]
    assert (cloud.height, cloud.width, cloud.is_dense) == (h, w, False)
    assert cloud.header.frame_id == 'motorcycle_left_optical'
    xyz, rgb = cloud_xyz_rgb(cloud)
    vv, uu = np.mgrid[0:h, 0:w]
    want = np.stack([(uu - cx_l) * z_gt / MC['f'], (vv - MC['cy']) * z_gt / MC['f'], z_gt], -1)
    np.testing.assert_allclose(xyz[valid], want[valid], rtol=1e-3, atol=1e-4)
    assert np.isnan(xyz[~valid]).all()
    packed = (left[..., 0].astype(np.uint32) << 16) | (left[..., 1].astype(np.uint32) << 8) | \
        left[..., 2]
    np.testing.assert_array_equal(rgb, packed)


def test_depth_stddev_from_the_x_variance(motorcycle_replay):
    outputs, (_, _, d_gt) = motorcycle_replay
    node = '/romav2_node'
    z = imgmsg_to_numpy(outputs[f'{node}/depth'][0]).astype(np.float64)
    sz = imgmsg_to_numpy(outputs[f'{node}/depth_stddev'][0])
    valid = np.isfinite(z)
    # the oracle's covariance is 0.25 px^2 of a grid equal to the image: sigma_d = 0.5 px
    want = z ** 2 / (MC['f'] * MC['baseline_m']) * 0.5
    np.testing.assert_allclose(sz[valid], want[valid], rtol=1e-5)


def rig():
    """cv2.stereoRectify of a rig with a 1.5 deg relative rotation; 640 x 480."""
    K1 = np.array([[500.0, 0, 322.0], [0, 502.0, 236.0], [0, 0, 1]])
    K2 = np.array([[505.0, 0, 318.0], [0, 503.0, 243.0], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.01, -0.02, 0.015]))[0]
    T = np.array([-0.12, 0.002, 0.002])
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(K1, np.zeros(5), K2, np.zeros(5), (640, 480),
                                                R, T, alpha=0)
    return K1, K2, R, T, R1, R2, P1, P2


def rig_inputs(stamp, K1, K2, R1, R2, P1, P2, dy_image=0):
    left, li, right, ri = om.stereo_inputs(stamp)
    for info, K, Rr, P in ((li, K1, R1, P1), (ri, K2, R2, P2)):
        info.k, info.r, info.p = K.ravel().tolist(), Rr.ravel().tolist(), P.ravel().tolist()
    return left, li, right, ri


def angle_deg(R):
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(R)[0])))


def pose_of(msg):
    from romav2_core.pose import rotation_to_quaternion  # noqa: F401 (same convention)
    q = msg.pose.pose.orientation
    x, y, z, w = q.x, q.y, q.z, q.w
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    p = msg.pose.pose.position
    return R, np.array([p.x, p.y, p.z])


def test_pose_is_between_the_named_optical_frames():
    """CameraInfo.R of 1.4-2.8 deg: the published pose equals the rig's (R, T) between the
    optical frames the headers name, within 0.05 deg."""
    K1, K2, R, T, R1, R2, P1, P2 = rig()
    oracle = om.RectifiedRigOracle(R1, R2, P1, P2, R, T)
    pipe = MatchingPipeline(oracle, PipelineConfig(ransac_threshold_px=0.5))
    res = pipe.process(rig_inputs(Time(sec=3), K1, K2, R1, R2, P1, P2),
                       {'relative_pose', 'relative_pose_info'})
    msg = res.messages['relative_pose']
    assert msg.header.frame_id == 'right_optical'
    R_est, t_est = pose_of(msg)
    assert angle_deg(R_est @ R.T) < 0.05
    cos = t_est @ T / np.linalg.norm(T) / np.linalg.norm(t_est)
    assert np.degrees(np.arccos(min(1.0, cos))) < 0.05
    # the rectification health check sees a perfect rectification and calibration
    assert res.health.vertical_median_px < 0.1 and res.health.baseline_angle_deg < 0.05


def test_roi_and_binning_equal_the_equivalent_full_resolution_camera_info():
    """The 640 x 480 images described as a 1600 x 1200 calibration with roi (160, 120,
    1280, 960) binned 2x2, and directly: same disparity f/t and the same pose."""
    pipe_args = dict(wanted={'disparity', 'relative_pose'})
    direct = om.stereo_inputs(Time(sec=1))
    binned = om.stereo_inputs(Time(sec=1))
    for info in binned[1::2]:
        for name in ('k', 'p'):
            M = np.array(getattr(info, name), np.float64).reshape(3, -1)
            M[0, 2], M[1, 2] = M[0, 2] * 2 + 160, M[1, 2] * 2 + 120   # inverse of (c - off) / 2
            M[:2, :2] *= 2
            if M.shape[1] == 4:
                M[0, 3] *= 2
            setattr(info, name, M.ravel().tolist())
        info.width, info.height, info.binning_x, info.binning_y = 1600, 1200, 2, 2
        info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 160, 120, \
            1280, 960
    out = [MatchingPipeline(om.stereo(), PipelineConfig()).process(s, pipe_args['wanted'])
           for s in (direct, binned)]
    a, b = (o.messages for o in out)
    assert (a['disparity'].f, a['disparity'].t) == pytest.approx(
        (b['disparity'].f, b['disparity'].t))
    np.testing.assert_allclose(imgmsg_to_numpy(a['disparity'].image),
                               imgmsg_to_numpy(b['disparity'].image), equal_nan=True)
    pa, pb = a['relative_pose'].pose, b['relative_pose'].pose
    np.testing.assert_allclose(pose_of(a['relative_pose'])[0], pose_of(b['relative_pose'])[0],
                               atol=1e-9)
    assert pa.pose.position == pb.pose.position
    np.testing.assert_allclose(pa.covariance, pb.covariance, rtol=1e-9)


def test_inconsistent_roi_is_refused_with_its_code():
    from romav2_ros.pipeline import InputError
    left, li, right, ri = om.stereo_inputs(Time(sec=1))
    li.binning_x = li.binning_y = 2
    li.roi.x_offset, li.roi.width, li.roi.height = 500, 400, 300   # 500 + 400 > 640
    with pytest.raises(InputError) as err:
        MatchingPipeline(om.stereo(), PipelineConfig()).process((left, li, right, ri), STEREO)
    assert err.value.code == 'inconsistent_camera_info'


def test_anisotropic_grid_and_covariance_reach_the_published_covariance():
    """A 160 x 160 output grid over 640 x 480 images and an anisotropic, correlated grid
    covariance: the published covariance is D C D with D = diag(640/160, 480/160)."""
    oracle = om.OracleMatcher(om.STEREO_R, om.STEREO_T, output_hw=(160, 160))
    oracle.covariance_grid = np.array([[0.3, 0.04], [0.04, 0.1]])
    res = MatchingPipeline(oracle, PipelineConfig()).process(
        om.stereo_inputs(Time(sec=1)), {'warp', 'covariance', 'matches'})
    cov = imgmsg_to_numpy(res.messages['covariance'])
    valid = np.isfinite(cov).all(axis=-1)
    assert valid.mean() > 0.5
    np.testing.assert_allclose(cov[valid], np.broadcast_to([0.3 * 16, 0.04 * 12, 0.1 * 9],
                                                           (valid.sum(), 3)), rtol=1e-5)
    m = res.messages['matches']
    np.testing.assert_allclose(np.reshape(m.covariance_b, (-1, 4))[0],
                               [4.8, 0.48, 0.48, 0.9], rtol=1e-5)
    warp = imgmsg_to_numpy(res.messages['warp'])
    v, u = np.mgrid[0:om.H, 0:om.W].astype(np.float64)
    truth = om.warp_px(u, v, om.STEREO_R, om.STEREO_T)
    inner = valid.copy()
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    assert np.abs(warp[inner] - truth[inner]).max() < 0.1


@pytest.mark.parametrize('dy,expect_warn', [(1.5, True), (0.0, False)])
def test_rectification_health(dy, expect_warn):
    """A pair with a known vertical offset reports it (1.5 +- 0.1 px) and WARNs; a correct
    pair reports < 0.1 px and OK."""
    from diagnostic_msgs.msg import DiagnosticStatus
    left, li, right, ri = om.stereo_inputs(Time(sec=1))
    d = om.FOCAL * om.BASELINE / om.depth(*np.meshgrid(np.arange(om.W), np.arange(om.H)))
    res = MatchingPipeline(om.DisparityOracle(d, dy=dy), PipelineConfig()).process(
        (left, li, right, ri), {'relative_pose'})
    assert res.health.vertical_median_px == pytest.approx(dy, abs=0.1)
    assert res.health.num_matches > 1000
    diag = Diagnostics(None, 'inputs', mode='stereo')
    diag.health(res.health)
    status = diag.statuses()[-1]
    assert status.name.endswith('stereo calibration')
    assert (status.level == DiagnosticStatus.WARN) == expect_warn
    assert ('stereo calibration may be off' in status.message) == expect_warn


def test_not_rectified_publishes_no_stereo_geometry():
    pipe = MatchingPipeline(om.stereo(), PipelineConfig(rectified=False))
    res = pipe.process(om.stereo_inputs(Time(sec=1)), STEREO)
    assert not set(res.messages) & {'disparity', 'depth', 'depth_stddev', 'points2'}
    assert 'warp' in res.messages
    assert any(n.startswith('not_rectified:') for n in res.notes)


def test_unorganised_thinned_cloud():
    pipe = MatchingPipeline(om.stereo(), PipelineConfig(points_organized=False,
                                                        points_stride=4))
    res = pipe.process(om.stereo_inputs(Time(sec=1)), {'points2', 'depth'})
    cloud = res.messages['points2']
    z = imgmsg_to_numpy(res.messages['depth'])[::4, ::4]
    assert cloud.height == 1 and cloud.is_dense
    assert cloud.width == np.isfinite(z).sum() > 0
    xyz, _ = cloud_xyz_rgb(cloud)
    np.testing.assert_allclose(np.sort(xyz[0, :, 2]), np.sort(z[np.isfinite(z)]), rtol=1e-6)


def test_a_set_is_processed_with_one_parameter_snapshot():
    """Parameters replaced while a set is in the model apply from the next set on."""
    oracle = om.stereo()
    pipe = MatchingPipeline(oracle, PipelineConfig())
    encode = oracle.encode

    def encode_and_change(images):
        pipe.config = pipe.config.replace(rectified=False, certainty_threshold=0.99)
        return encode(images)

    oracle.encode = encode_and_change
    first = pipe.process(om.stereo_inputs(Time(sec=1)), {'disparity', 'warp'})
    assert 'disparity' in first.messages                       # still rectified
    warp = imgmsg_to_numpy(first.messages['warp'])
    assert np.isfinite(warp).mean() > 0.5                      # still threshold 0.05
    second = pipe.process(om.stereo_inputs(Time(sec=2)), {'disparity', 'warp'})
    assert 'disparity' not in second.messages
    # the certainty ramp (0.2 -> 1.0 left to right) passes 0.99 only at the far right
    assert np.isfinite(imgmsg_to_numpy(second.messages['warp'])).mean() < 0.02


def depth_image_proc_cloud(depth: np.ndarray, info) -> np.ndarray:
    """depth_image_proc's point_cloud_xyz on a 32FC1 depth image with its camera_info:
    ``x = (u - cx) z / fx``, ``y = (v - cy) z / fy`` with image_geometry's ``cx()``, ``fx()``
    ... which read the projection matrix P (the rectified camera) -- written out here from
    its source, not taken from romav2_core."""
    P = np.array(info.p).reshape(3, 4)
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]].astype(np.float64)
    z = depth.astype(np.float64)
    return np.stack([(u - P[0, 2]) * z / P[0, 0], (v - P[1, 2]) * z / P[1, 1], z], axis=-1)


@pytest.mark.parametrize('points_frame', ['rectified', 'optical'])
def test_the_cloud_is_the_one_depth_image_proc_makes_from_the_depth(points_frame):
    """A rig with rectification rotations of 1.4-2.8 deg: with the default settings
    ~/points2 equals the cloud depth_image_proc computes from ~/depth and the left
    camera_info, to 1e-5 relative (float32); points_frame:=optical is that cloud rotated by
    R_left^T into the physical optical frame."""
    K1, K2, R, T, R1, R2, P1, P2 = rig()
    assert angle_deg(R1) > 1
    oracle = om.RectifiedRigOracle(R1, R2, P1, P2, R, T)
    pipe = MatchingPipeline(oracle, PipelineConfig(points_frame=points_frame))
    inputs = rig_inputs(Time(sec=4), K1, K2, R1, R2, P1, P2)
    res = pipe.process(inputs, {'depth', 'points2'})
    depth = imgmsg_to_numpy(res.messages['depth'])
    cloud = res.messages['points2']
    assert (cloud.point_step, [f.offset for f in cloud.fields]) == (16, [0, 4, 8, 12])
    points = np.frombuffer(bytes(cloud.data), np.float32).reshape(cloud.height, cloud.width,
                                                                  4)[..., :3]
    want = depth_image_proc_cloud(depth, inputs[1])
    if points_frame == 'optical':
        want = want @ R1                      # row-vector form of R1^T p
    ok = np.isfinite(depth)
    assert ok.mean() > 0.5 and np.isnan(points[~ok]).all()
    np.testing.assert_allclose(points[ok], want[ok], rtol=1e-5, atol=1e-6)
