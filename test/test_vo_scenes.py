"""test/vo_scenes.py: the synthetic VO sequences' oracle against the truth.

Oracles: OpenCV's solvePnP on the oracle's exact matches (3D points from the stereo pair's
disparity, ``Z = f B / d``, their matches in another frame) must find the true relative pose
from the scene's poses, and the true pose must reproject the points onto the matches; the
tags round-trip through the tensors a matcher sees; the drawn noise has the covariance the
matcher declares (converted from its output grid to image px here, on a grid whose cells are
4 x 5 px so a swapped axis fails); the still, covered and truth parts are what the scene table
says. Everything goes through ``match_features`` as the pipeline calls it.
"""
import cv2
import numpy as np
import pytest
import torch

import vo_eval
import vo_scenes as vs
from matcher_doubles import corner_value
from romav2_core.base_frame import CameraMount, pose_in_base_odom
from romav2_ros import matchers
from romav2_ros.static_tf import mount_from_parameter

GRID = (48, 80)                         # cells of 5 px (y) x 4 px (x) on 320 x 240 images


def tensor(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def match(matcher, scene, a, b):
    """``(u, v, x_b, y_b, certainty)`` ``[H_o x W_o]`` of camera ``a = (k, side)`` -> ``b``;
    px from the matcher's normalised warp with the align_corners=False definitions."""
    imgs = [scene.images(k)[side - 1] for k, side in (a, b)]
    f = matcher.encode(tensor(imgs))
    out = matcher.match_features(f[:1], f[1:])
    h, w = imgs[0].shape[:2]
    ho, wo = matcher.output_hw
    v, u = np.mgrid[0:ho, 0:wo]
    u, v = (u + 0.5) * w / wo - 0.5, (v + 0.5) * h / ho - 0.5
    warp = out['warp_AB'][0].double().numpy()
    x, y = ((warp[..., 0] + 1) * w - 1) / 2, ((warp[..., 1] + 1) * h - 1) / 2
    return u, v, x, y, out['overlap_AB'][0, ..., 0].numpy(), out['covariance_AB'][0].numpy()


@pytest.fixture(scope='module')
def drive():
    return vs.scene('drive_200m')


def test_scene_table(drive):
    frames = {name: vs.scene(name).frames for name in vs.SCENES}
    assert frames == {'drive_200m': 1001, 'drive_200m_slow': 4002, 'stop_and_go': 241,
                      'covered_lens': 121, 'acceptance': 1121}
    truth = vo_eval.trajectory((drive.stamp_s(np.arange(drive.frames)), drive.truth_base_odom()))
    assert truth.path_length == pytest.approx(200, abs=0.5)   # turns: whole frames of arc
    yaw = np.degrees(np.unwrap(np.arctan2(drive.body[:, 1, 0], drive.body[:, 0, 0])))
    assert np.ptp(yaw) > 180                                  # turns, both ways
    assert (np.diff(yaw) < -1).any() and (np.diff(yaw) > 1).any()


@pytest.mark.parametrize('k', [0, 1, 255, 256, 1000, 1120, vs.MAX_FRAMES - 1])
def test_tags_round_trip_through_uint8_and_float_tensors(k):
    img = np.zeros((4, 6, 3), np.uint8)
    for side in (1, 2):
        t = tensor([vs.tag(img, k, side)])
        assert vs.untag(corner_value(t, 0)) == (k, side)
        assert vs.untag(corner_value(t.float() / 255, 0)) == (k, side)
    assert vs.untag(corner_value(tensor([vs.om.tag(img, k % 256, 1)]), 0)) is None
    with pytest.raises(ValueError):
        vs.tag(img, vs.MAX_FRAMES, 1)


def test_every_frame_of_a_scene_has_its_own_tag():
    scene = vs.scene('acceptance')
    tags = {vs.untag(tuple(img[0, 0])) for k in range(scene.frames) for img in scene.images(k)}
    assert tags == {(k, side) for k in range(scene.frames) for side in (1, 2)}


def true_pose(scene, a, b):
    """Pose of camera ``a`` in camera ``b`` (``p_b = R p_a + t``) from the scene's poses."""
    T = np.linalg.inv(scene.camera_pose(*b)) @ scene.camera_pose(*a)
    return T[:3, :3], T[:3, 3]


@pytest.mark.parametrize('k, back', [(1, 1), (120, 1), (200, 1), (400, 1), (700, 1),
                                     (1000, 1), (300, 5)])
def test_exact_matches_give_the_true_pose_to_solvepnp(drive, k, back):
    """Frames on straights (1, 120, 1000) and in turns (200, 400, 700), and five frames back."""
    exact = vs.VoOracle(drive, output_hw=GRID, noise=False)
    u, v, xr, yr, c_stereo, _ = match(exact, drive, (k, 1), (k, 2))
    _, _, xb, yb, c_temporal, _ = match(exact, drive, (k, 1), (k - back, 1))
    ok = (c_stereo > 0) & (c_temporal > 0)
    assert ok.mean() > 0.5, 'the ground fills most of the view'
    # the matcher's warp is float32 in [-1, 1]: rounding ~6e-8 of half an image, ~1e-5 px
    # the rectified pair: same row, positive disparity
    np.testing.assert_allclose(yr[c_stereo > 0], v[c_stereo > 0], atol=1e-4)
    d = (u - xr)[ok]
    assert d.min() > 0
    K, cam = drive.camera.K, drive.camera
    Z = cam.focal * cam.baseline / d
    X = np.c_[(u[ok] - K[0, 2]) * Z / cam.focal, (v[ok] - K[1, 2]) * Z / cam.focal, Z]
    pts_b = np.c_[xb[ok], yb[ok]]
    R, t = true_pose(drive, (k, 1), (k - back, 1))
    # the true pose reprojects the stereo points onto the temporal matches (the rounding
    # above, ~1e-5 px, also on the disparities: depth ~1e-5 relative at 2 px; seen: 2e-5 px)
    reproj = cv2.projectPoints(X, cv2.Rodrigues(R)[0], t, K, None)[0].reshape(-1, 2)
    assert np.abs(reproj - pts_b).max() < 1e-3
    ok_pnp, rvec, tvec = cv2.solvePnP(X, pts_b, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
    assert ok_pnp
    # the same rounding over ~2600 points (seen: ~5e-9 m and below 1e-7 deg)
    angle = np.degrees(np.linalg.norm(cv2.Rodrigues(cv2.Rodrigues(rvec)[0] @ R.T)[0]))
    assert angle < 1e-5 and np.linalg.norm(tvec.ravel() - t) < 1e-6


def test_noise_has_the_declared_covariance_and_is_reproducible(drive):
    exact = vs.VoOracle(drive, output_hw=GRID, noise=False)
    noisy = vs.VoOracle(drive, output_hw=GRID, noise=True, seed=7)
    errors, declared = [], None
    pairs = [((k, 1), (k, 2)) for k in (10, 500)] + [((k, 1), (k - 1, 1)) for k in (11, 600)]
    for a, b in pairs:
        _, _, x0, y0, c, _ = match(exact, drive, a, b)
        _, _, x1, y1, c1, cov_grid = match(noisy, drive, a, b)
        ok = (c > 0) & (c1 > 0)
        errors.append(np.c_[(x1 - x0)[ok], (y1 - y0)[ok]])
        # the declared covariance, grid px^2 -> image px^2 (x cells 4 px, y cells 5 px)
        scale = np.array([drive.camera.width / GRID[1], drive.camera.height / GRID[0]])
        declared = cov_grid[ok][0] * np.outer(scale, scale)
        np.testing.assert_allclose(cov_grid[ok], np.broadcast_to(cov_grid[ok][0], (ok.sum(), 2,
                                                                                     2)))
        _, _, x2, y2, _, _ = match(noisy, drive, a, b)                 # the same pair again
        np.testing.assert_array_equal(np.c_[x2[ok], y2[ok]], np.c_[x1[ok], y1[ok]])
    e = np.concatenate(errors)
    n = len(e)
    assert n > 5000
    np.testing.assert_allclose(declared, vs.MATCH_COVARIANCE_PX2, rtol=1e-6)   # float32
    # sample covariance: standard error of an entry sqrt((C_ii C_jj + C_ij^2) / n); 5 of them
    # (measured at n ~ 10700: swapped x and y ~58 standard errors, no correlation ~42)
    C = declared
    z = (np.cov(e.T) - C) / np.sqrt((np.outer(np.diag(C), np.diag(C)) + C ** 2) / n)
    assert np.abs(z).max() < 5, z
    assert np.all(np.abs(e.mean(axis=0)) < 5 * np.sqrt(np.diag(C) / n))
    # pairs are independent: the errors of two pairs do not correlate
    m = min(len(errors[0]), len(errors[1]))
    assert abs(np.corrcoef(errors[0][:m, 0], errors[1][:m, 0])[0, 1]) < 5 / np.sqrt(m)
    # another seed, other noise
    other = vs.VoOracle(drive, output_hw=GRID, noise=True, seed=8)
    assert not np.array_equal(match(other, drive, *pairs[0])[2], match(noisy, drive,
                                                                         *pairs[0])[2])


def test_still_segment_and_covered_frames():
    still = vs.scene('stop_and_go')
    for k in range(61, 181):                     # 120 frames at frame 60's pose
        np.testing.assert_array_equal(still.body[k], still.body[60])
    assert not np.allclose(still.body[59], still.body[60])
    assert not np.allclose(still.body[181], still.body[180])
    exact = vs.VoOracle(still, output_hw=GRID, noise=False)
    u, v, x, y, c, _ = match(exact, still, (100, 1), (99, 1))
    assert (c > 0).mean() > 0.5
    seen = c > 0                  # standing still: each pixel on itself (float32: ~1e-5 px)
    np.testing.assert_allclose(np.c_[x[seen], y[seen]], np.c_[u[seen], v[seen]], atol=1e-4)

    covered = vs.scene('covered_lens')
    exact = vs.VoOracle(covered, output_hw=GRID, noise=False)
    for a, b in [((60, 1), (60, 2)), ((59, 1), (58, 1)), ((62, 1), (61, 1))]:
        assert (match(exact, covered, a, b)[4] == 0).all(), (a, b)
    # around the gap, and across it (the frame after with the last one before)
    for a, b in [((58, 1), (57, 1)), ((63, 1), (62, 1)), ((62, 1), (62, 2)), ((62, 1), (58, 1))]:
        assert (match(exact, covered, a, b)[4] > 0).mean() > 0.5, (a, b)


def test_truth_files_and_the_base_frame_variant(drive, tmp_path):
    cam, base = drive.truth_camera_odom(), drive.truth_base_odom()
    np.testing.assert_allclose(cam[0], np.eye(4), atol=1e-15)
    np.testing.assert_allclose(base[0], np.eye(4), atol=1e-15)
    # the two truths are one motion seen through the mount (base_frame's transform)
    mount = CameraMount(*mount_from_parameter(drive.mount_parameter()))
    np.testing.assert_allclose(mount.R, vs.MOUNT[:3, :3], atol=1e-12)
    for k in (1, 333, 1000):
        R, t, _ = pose_in_base_odom(mount, cam[k, :3, :3], cam[k, :3, 3], np.eye(6))
        np.testing.assert_allclose(R, base[k, :3, :3], atol=1e-9)
        np.testing.assert_allclose(t, base[k, :3, 3], atol=1e-9)
    # the robot starts level, so odom's z is up: the base stays within the relief's +-6.2 cm
    # of odom's x-y plane (which is at the start's height, a crest) over 200 m
    np.testing.assert_allclose(drive.body[0, :3, :3], np.eye(3), atol=1e-15)
    assert base[:, 2, 3].max() < 1e-12 and base[:, 2, 3].min() > -0.125
    assert np.ptp(base[:, 0, 3]) > 30 and np.ptp(base[:, 1, 3]) > 30
    for frame, T in (('camera', cam), ('base', base)):
        loaded = vo_eval.trajectory(drive.write_truth(tmp_path / f'{frame}.txt', frame))
        np.testing.assert_allclose(loaded.positions_xyz, T[:, :3, 3], atol=1e-8)  # 9 decimals
        np.testing.assert_allclose(np.array(loaded.poses_se3)[:, :3, :3], T[:, :3, :3],
                                   atol=1e-8)
        np.testing.assert_allclose(loaded.timestamps, drive.stamp_s(np.arange(drive.frames)))


def test_factories_load_as_the_node_loads_them():
    for name in vs.SCENES:
        m = matchers.create(f'vo_scenes:{name}', config=None, device='cpu', seed=3)
        assert isinstance(m, vs.VoOracle) and m.scene is vs.scene(name) and m.seed == 3
    # the node's warm-up: random images, an identity answer of the matcher's shapes
    m = matchers.create('vo_scenes:stop_and_go', config=None, device='cpu')
    matchers.warm_up(m, 'cpu', 'stereo_odometry')
