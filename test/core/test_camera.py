"""CameraInfo geometry: ROI and binning as image_geometry, the resize rule, refusals.

The oracle is projection itself: a 3D point projected with the calibration's K lands on a
full-resolution pixel; cropping, binning and resizing move that pixel by the definitions
below (pixel-area arithmetic written out here), and the adjusted K must project the point
exactly there. Every case is anisotropic (unequal x/y factors) so a swapped axis fails.
"""
import numpy as np
import pytest

from romav2_core.camera import CameraGeometryError, Roi, from_calibration, scale_intrinsics

# A 1280 x 960 calibration with a skew-free K and a right-camera P (Tx = -fx * 0.12 m).
FX, FY, CX, CY = 1000.0, 980.0, 650.3, 470.8
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
P = np.c_[K + np.array([[0, 0, 3.0], [0, 0, -2.0], [0, 0, 0]]), [-FX * 0.12, 0, 0]]
CALIB_HW = (960, 1280)
POINTS = np.array([[0.3, -0.2, 3.0], [-0.7, 0.4, 5.0], [0.05, 0.02, 1.5], [1.1, -0.6, 8.0]])


def project(M, X):
    """Pixels of 3D points through a 3x3 K or 3x4 P."""
    M = np.asarray(M)
    h = (X @ M[:, :3].T) + (M[:, 3] if M.shape[1] == 4 else 0)
    return h[:, :2] / h[:, 2:]


def camera(image_hw, binning=(0, 0), roi=Roi(), calib_hw=CALIB_HW, k=K, p=P):
    return from_calibration(k.ravel(), np.zeros(5), 'plumb_bob', np.eye(3).ravel(),
                            p.ravel(), calib_hw, binning, roi, image_hw)


def test_roi_and_binning_follow_image_geometry():
    """ROI (100, 60) of 1024 x 768, binned 2 x 4 -> a 512 x 192 image. image_geometry: a
    full-res pixel x maps to (x - x_offset) / binning (its definition of the binned grid)."""
    roi = Roi(100, 60, 1024, 768)
    cam = camera((192, 512), binning=(2, 4), roi=roi)
    for M, M_full in ((cam.K, K), (cam.P, P)):
        full = project(M_full, POINTS)
        want = np.c_[(full[:, 0] - 100) / 2, (full[:, 1] - 60) / 4]
        np.testing.assert_allclose(project(M, POINTS), want, atol=1e-9)
    # the baseline -Tx / fx is a length: binning does not change it
    assert -cam.P[0, 3] / cam.P[0, 0] == pytest.approx(0.12)
    assert (cam.height, cam.width) == (192, 512)


def test_roi_binning_equals_the_equivalent_full_resolution_camera_info():
    """The same image described two ways: by roi + binning, and by a CameraInfo written for
    the 512 x 384 image directly (its K by hand from the definitions)."""
    binned = camera((384, 512), binning=(2, 2), roi=Roi(64, 32, 1024, 768))
    k_direct = np.array([[FX / 2, 0, (CX - 64) / 2], [0, FY / 2, (CY - 32) / 2], [0, 0, 1]])
    p_direct = np.c_[np.array([[FX / 2, 0, (CX + 3 - 64) / 2], [0, FY / 2, (CY - 2 - 32) / 2],
                               [0, 0, 1]]), [-FX / 2 * 0.12, 0, 0]]
    direct = camera((384, 512), calib_hw=(384, 512), k=k_direct, p=p_direct)
    np.testing.assert_allclose(binned.K, direct.K, atol=1e-12)
    np.testing.assert_allclose(binned.P, direct.P, atol=1e-12)


def test_resize_rule_is_pixel_area_mapping_per_axis():
    """Calibration 1280 x 960, image 640 x 720 (x halved, y 3/4): a pixel edge stays an edge,
    so a full-res position x becomes (x + 0.5) * s - 0.5 on each axis."""
    cam = camera((720, 640))
    sx, sy = 640 / 1280, 720 / 960
    for M, M_full in ((cam.K, K), (cam.P, P)):
        full = project(M_full, POINTS)
        want = np.c_[(full[:, 0] + 0.5) * sx - 0.5, (full[:, 1] + 0.5) * sy - 0.5]
        np.testing.assert_allclose(project(M, POINTS), want, atol=1e-9)
    np.testing.assert_allclose(scale_intrinsics(K, sx, sy), cam.K)


def test_binning_then_resize():
    """Binned 2 x 2 (640 x 480 described) but published at 320 x 360: the resize rule applies
    after the binning."""
    cam = camera((360, 320), binning=(2, 2))
    full = project(K, POINTS)
    binned = full / 2
    want = np.c_[(binned[:, 0] + 0.5) * 0.5 - 0.5, (binned[:, 1] + 0.5) * 0.75 - 0.5]
    np.testing.assert_allclose(project(cam.K, POINTS), want, atol=1e-9)


@pytest.mark.parametrize('kwargs,code', [
    (dict(roi=Roi(1000, 0, 400, 300)), 'inconsistent_camera_info'),      # beyond the width
    (dict(roi=Roi(0, 700, 400, 300)), 'inconsistent_camera_info'),       # beyond the height
    (dict(roi=Roi(10, 10, 0, 300)), 'inconsistent_camera_info'),         # partly zero
    (dict(binning=(2, 2), calib_hw=(0, 0)), 'inconsistent_camera_info'),  # no calib size
])
def test_inconsistent_calibrations_are_refused(kwargs, code):
    with pytest.raises(CameraGeometryError) as err:
        camera((240, 320), **kwargs)
    assert err.value.code == code


def test_non_finite_and_uncalibrated():
    bad = K.copy()
    bad[0, 0] = np.nan
    with pytest.raises(CameraGeometryError) as err:
        camera((960, 1280), k=bad)
    assert err.value.code == 'nan_camera_info'
    assert camera((960, 1280), k=np.zeros((3, 3))) is None
