"""Rectified stereo geometry against independent oracles.

* Middlebury 2014 Motorcycle (scikit-image, 741 x 500): its ground-truth disparity and
  calibration (``f``, ``doffs``, baseline: the benchmark's ``Z = baseline f / (d + doffs)``).
* OpenCV: ``cv2.stereoRectify`` for a real rig with rectification rotations, and
  ``cv2.reprojectImageTo3D`` with its ``Q`` for the points.
* Monte Carlo for the first-order depth uncertainty.
"""
import cv2
import numpy as np
import pytest
import torch
from skimage import data

from romav2_core.stereo import RectifiedStereo, baseline_angle_deg, vertical_disparity

# The sample's calibration (scripts/make_sample_data.py: Middlebury's, downsampled x4).
F, CX, CY, DOFFS, BASELINE = 994.978, 311.193, 254.877, 31.086, 0.193001


def t(a):
    return torch.as_tensor(np.asarray(a, np.float32))


def disparity_map(stereo, warp_x):
    """Disparity of every pixel of a ``[H x W]`` map of right-image x (the products' call)."""
    u = torch.arange(warp_x.shape[1], dtype=torch.float32)[None, :]
    return stereo.disparity(u, t(warp_x))


def motorcycle():
    left, _, disparity = data.stereo_motorcycle()
    h, w = left.shape[:2]
    P_l = np.array([[F, 0, CX, 0], [0, F, CY, 0], [0, 0, 1, 0.0]])
    P_r = np.array([[F, 0, CX + DOFFS, -F * BASELINE], [0, F, CY, 0], [0, 0, 1, 0.0]])
    return RectifiedStereo(P_l, P_r, np.eye(3), np.eye(3)), disparity.astype(np.float64), (h, w)


def test_disparity_and_depth_follow_the_middlebury_definition():
    stereo, d_gt, (h, w) = motorcycle()
    u = np.arange(w)[None, :]
    warp_x = np.where(np.isfinite(d_gt), u - d_gt, np.nan)      # x_right = x_left - d
    d = disparity_map(stereo, warp_x)
    ok = np.isfinite(d_gt)
    assert ok.mean() > 0.5
    # DisparityImage: d = x_l - x_r - (cx_l - cx_r) = d_gt + doffs (float32 arithmetic)
    np.testing.assert_allclose(d.numpy()[ok], d_gt[ok] + DOFFS, rtol=1e-5)
    z = stereo.depth(d).numpy()
    z_gt = BASELINE * F / (d_gt[ok] + DOFFS)                    # Middlebury's readme formula
    np.testing.assert_allclose(z[ok], z_gt, rtol=1e-5)          # float32 rounding
    assert np.isnan(z[~ok]).all()
    assert stereo.f == F and stereo.baseline == pytest.approx(BASELINE)


def test_points_match_opencv_reprojection_with_unequal_principal_points():
    stereo, d_gt, (h, w) = motorcycle()
    u = np.arange(w)[None, :]
    warp_x = np.where(np.isfinite(d_gt), u - d_gt, np.nan)
    points = stereo.points(stereo.depth(disparity_map(stereo, warp_x))).permute(1, 2, 0).numpy()
    # OpenCV's Q for the raw disparity x_l - x_r (its convention; Tx = -baseline):
    # W = (-d + (cx_l - cx_r)) / Tx ... written out from the stereoRectify documentation.
    Tx = -BASELINE
    Q = np.array([[1, 0, 0, -CX], [0, 1, 0, -CY], [0, 0, 0, F],
                  [0, 0, -1 / Tx, (CX - (CX + DOFFS)) / Tx]])
    ref = cv2.reprojectImageTo3D(np.nan_to_num(d_gt, posinf=0).astype(np.float32), Q)
    ok = np.isfinite(d_gt)
    np.testing.assert_allclose(points[ok], ref[ok], rtol=1e-4, atol=1e-5)
    assert np.isnan(points[~ok]).all()


def test_points_live_in_the_rectified_frame_or_rotate_into_the_optical_frame():
    """A real rig (cv2.stereoRectify): by default points are Z K^-1 [u v 1] in the rectified
    frame, as depth_image_proc computes them from the depth and P; ``frame='optical'`` rotates
    them by R1^T into the optical frame, where they project through the raw K."""
    K = np.array([[700.0, 0, 330.0], [0, 705.0, 238.0], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.01, -0.025, 0.015]))[0]
    T = np.array([-0.12, 0.004, 0.002])
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(K, np.zeros(5), K, np.zeros(5), (640, 480),
                                                R, T, alpha=0)
    stereo = RectifiedStereo(P1, P2, R1, R2)
    depth = torch.full((480, 640), 3.0)
    v, u = 200, 400
    rect = np.linalg.inv(P1[:, :3]) @ np.array([u, v, 1.0]) * 3.0
    np.testing.assert_allclose(stereo.points(depth)[:, v, u].numpy(), rect, rtol=1e-5)
    optical = stereo.points(depth, 'optical')[:, v, u].numpy()
    np.testing.assert_allclose(optical, R1.T @ rect, rtol=1e-5)
    # the optical-frame point seen by the rectified camera lands back on pixel (u, v)
    back = P1[:, :3] @ (R1 @ optical.astype(np.float64))
    np.testing.assert_allclose(back[:2] / back[2], [u, v], atol=1e-3)
    # every 4th row and column: the same points
    np.testing.assert_array_equal(stereo.points(depth, 'rectified', 4)[:, 50, 100].numpy(),
                                  stereo.points(depth)[:, 200, 400].numpy())


def test_depth_stddev_is_the_first_order_spread():
    """sigma_Z = Z^2 / (f T) sigma_d, against the spread of Z over noisy disparities."""
    P_l = np.array([[500.0, 0, 320, 0], [0, 500, 240, 0], [0, 0, 1, 0]])
    P_r = P_l.copy()
    P_r[0, 3] = -500 * 0.1
    stereo = RectifiedStereo(P_l, P_r, np.eye(3), np.eye(3))
    d_true, sigma_d = 25.0, 0.2                        # Z = 2 m, small noise (first order)
    rng = np.random.default_rng(0)
    z = stereo.depth(t(np.full((1, 200_000), d_true) + rng.normal(0, sigma_d, (1, 200_000))))
    predicted = stereo.depth_stddev(t([[2.0]]), t([[sigma_d ** 2]]))
    assert float(predicted[0, 0]) == pytest.approx(2.0 ** 2 / 50.0 * sigma_d)
    assert float(np.std(z.numpy())) == pytest.approx(float(predicted[0, 0]), rel=0.02)


def test_vertical_disparity_and_baseline_angle():
    rng = np.random.default_rng(1)
    pa = rng.uniform([0, 0], [640, 480], (500, 2))
    pb = pa + np.array([-20.0, 1.5])
    pb[:100, 1] += 0.1 * np.arange(100)                    # a spread: percentiles to compare
    valid = np.ones(500, bool)
    valid[::7] = False
    median, p90, n = vertical_disparity(t(pa), t(pb), torch.as_tensor(valid)).tolist()
    want = np.percentile(np.abs(pa - pb)[valid, 1], [50, 90])    # numpy's linear percentile
    assert (median, p90) == pytest.approx(tuple(want), rel=1e-5) and n == valid.sum()
    P_l = np.array([[500.0, 0, 320, 0], [0, 500, 240, 0], [0, 0, 1, 0]])
    P_r = P_l.copy()
    P_r[0, 3] = -50.0
    stereo = RectifiedStereo(P_l, P_r, np.eye(3), np.eye(3))
    np.testing.assert_allclose(stereo.calibrated_translation, [-1, 0, 0])
    tilted = np.array([-np.cos(np.radians(3)), np.sin(np.radians(3)), 0])
    assert baseline_angle_deg(tilted, stereo) == pytest.approx(3.0)


def test_points_project_back_through_an_anisotropic_camera():
    """fx != fy (non-square pixels, a binned axis): every point projects through P_left back
    onto the pixel it came from, at its depth."""
    P_l = np.array([[520.0, 0, 330.5, 0], [0, 455.0, 228.0, 0], [0, 0, 1, 0]])
    P_r = P_l.copy()
    P_r[0, 3] = -520.0 * 0.1
    stereo = RectifiedStereo(P_l, P_r, np.eye(3), np.eye(3))
    rng = np.random.default_rng(4)
    depth = rng.uniform(1.0, 9.0, (48, 64)).astype(np.float32)
    pts = stereo.points(t(depth)).permute(1, 2, 0).numpy().reshape(-1, 3).astype(np.float64)
    h = np.c_[pts, np.ones(len(pts))] @ P_l.T
    v, u = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(h[:, :2] / h[:, 2:], np.c_[u.ravel(), v.ravel()], atol=1e-3)
    np.testing.assert_allclose(pts[:, 2], depth.ravel(), rtol=1e-6)
