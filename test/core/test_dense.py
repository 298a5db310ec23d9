"""Model grid -> image pixels: warp, certainty, covariance, validity, grid matches.

Anisotropic on purpose: a 160 x 160 output grid over a 640 x 480 image A, B of another size
(800 x 400), and a covariance with unequal, correlated entries. The oracle is an affine warp
written in pixels (bilinear interpolation reproduces an affine field exactly, away from the
held border), converted to the grid's normalised coordinates by the definitions, not by
``romav2_core.geometry``.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from romav2_core.dense import PairGrid, upsample
from romav2_core.products import DENSE_KEYS, dense_maps

HO, WO = 160, 160
HW_A, HW_B = (480, 640), (400, 800)
# an affine warp A px -> B px with different x and y behaviour
AFFINE = np.array([[1.2, 0.05, 7.0], [-0.03, 0.8, -4.0]])
COV_GRID = np.array([[0.36, 0.05], [0.05, 0.09]])     # px^2 of the 160 x 160 grid over B


def affine(u, v):
    return AFFINE[0, 0] * u + AFFINE[0, 1] * v + AFFINE[0, 2], \
        AFFINE[1, 0] * u + AFFINE[1, 1] * v + AFFINE[1, 2]


def grid_outputs(certainty=0.7):
    j, i = np.meshgrid(np.arange(WO), np.arange(HO), indexing='xy')
    u, v = (j + 0.5) * HW_A[1] / WO - 0.5, (i + 0.5) * HW_A[0] / HO - 0.5
    xb, yb = affine(u, v)
    warp = np.stack([(2 * xb + 1) / HW_B[1] - 1, (2 * yb + 1) / HW_B[0] - 1], -1)
    overlap = np.full((HO, WO, 1), certainty)
    cov = np.broadcast_to(COV_GRID, (HO, WO, 2, 2))
    return [torch.tensor(a, dtype=torch.float32) for a in (warp, overlap, cov)]


def pair_grid(certainty=0.7, threshold=0.5) -> PairGrid:
    return PairGrid(*grid_outputs(certainty), HW_A, HW_B, threshold)


def test_dense_warp_covariance_and_validity():
    out = {k: v.numpy() for k, v in dense_maps(pair_grid(), DENSE_KEYS).items()}
    warp, cov, certainty = out['warp'], out['covariance'], out['certainty']
    assert warp.shape == (480, 640, 2) and cov.shape == (480, 640, 3)
    valid = np.isfinite(warp).all(axis=-1)
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)
    xb, yb = affine(u, v)
    inside = (xb >= -0.5) & (xb <= 799.5) & (yb >= -0.5) & (yb <= 399.5)
    # float32 decides matches that land exactly on B's edge either way
    on_edge = (np.minimum(np.abs(xb + 0.5), np.abs(xb - 799.5)) < 1e-3) | \
        (np.minimum(np.abs(yb + 0.5), np.abs(yb - 399.5)) < 1e-3)
    np.testing.assert_array_equal(valid[~on_edge], inside[~on_edge])
    inside &= valid
    # Away from the border ring where the upsampling holds the edge value (half a cell:
    # 2 px in x, 1.5 px in y), bilinear interpolation of an affine field is exact; float32.
    core = inside.copy()
    core[:2], core[-2:], core[:, :2], core[:, -2:] = False, False, False, False
    np.testing.assert_allclose(warp[core][:, 0], xb[core], atol=2e-3)
    np.testing.assert_allclose(warp[core][:, 1], yb[core], atol=2e-3)
    assert np.isnan(warp[~inside]).all() and np.isnan(cov[~inside]).all()
    # grid px -> B px: x by 800 / 160 = 5, y by 400 / 160 = 2.5
    want = [0.36 * 25, 0.05 * 5 * 2.5, 0.09 * 6.25]
    np.testing.assert_allclose(cov[inside], np.broadcast_to(want, (inside.sum(), 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(certainty, 0.7, rtol=1e-6)


def test_threshold_masks():
    out = dense_maps(pair_grid(certainty=0.3), ('warp', 'covariance'))
    assert torch.isnan(out['warp']).all() and torch.isnan(out['covariance']).all()


def test_grid_cells_are_cell_centres_and_their_warps():
    g = pair_grid()
    pa, pb = g.points_a.numpy().reshape(-1, 2), g.points_b_px().numpy().reshape(-1, 2)
    assert pa.shape == (HO * WO, 2) and g.grid_hw == (HO, WO)
    # cell (i, j) = index i * WO + j; its centre in A px:
    # x (j + 0.5) * 4 - 0.5, y (i + 0.5) * 3 - 0.5
    k = 37 * WO + 101
    assert pa[k] == pytest.approx([(101 + 0.5) * 4 - 0.5, (37 + 0.5) * 3 - 0.5])
    xb, yb = affine(pa[:, 0].astype(np.float64), pa[:, 1].astype(np.float64))
    np.testing.assert_allclose(pb, np.c_[xb, yb], atol=2e-3)
    cell = g.cells(torch.tensor([k])).numpy()[0]             # x, y, certainty, sxx, sxy, syy
    np.testing.assert_allclose(cell[:2], pb[k], rtol=1e-6)
    np.testing.assert_allclose(cell[2:], [0.7, 9.0, 0.625, 0.5625], rtol=1e-5)
    inside = (xb >= -0.5) & (xb <= 799.5) & (yb >= -0.5) & (yb <= 399.5)
    np.testing.assert_array_equal(g.valid.numpy().ravel(), inside)


@pytest.mark.parametrize('grid_hw, hw, channels', [((24, 40), (30, 36), 4),   # up H, down W
                                                  ((40, 40), (30, 40), 2),   # H only (VGA)
                                                  ((17, 9), (17, 23), 1),    # W only
                                                  ((8, 12), (8, 12), 3)])    # no change
def test_upsample_is_torchs_bilinear_interpolation(grid_hw, hw, channels):
    """Against ``F.interpolate`` (bilinear, align_corners=False) on the channels-first field;
    float32 with the same taps, one lerp per axis instead of a weighted sum: a few ulps."""
    field = torch.randn(*grid_hw, channels, generator=torch.Generator().manual_seed(3))
    got = upsample(field, hw)
    want = F.interpolate(field.permute(2, 0, 1)[None], size=hw, mode='bilinear',
                         align_corners=False)[0]
    assert got.shape == (channels, *hw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.fill_(0.0)                         # a new tensor, never a view of the model's output
    assert field.abs().sum() > 0
