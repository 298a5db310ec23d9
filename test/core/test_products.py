"""The device products (romav2_core/products.py) against the host implementation they replace
(test/host_reference.py: the numpy/float64 post-processing as it was), on anisotropic cases: a
160 x 160 output grid over a 640 x 480 image A, B of 800 x 400, a rig with unequal principal
points and a rectification rotation. "Equal" means equal to float32 rounding (the device
computes in float32 what the host computed in float64 and then rounded to float32).
"""
import cv2
import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

import host_reference as ref
from romav2_core.dense import PairGrid, upsample
from romav2_core.products import (CHECK_STRIDE, DENSE_KEYS, PointCloudLayout, Samples,
                                  dense_maps, health, metric_usable, sample_matches,
                                  stereo_maps, tracking_shares)
from romav2_core.sampling import PREFILTER
from romav2_core.stereo import RectifiedStereo

HO, WO = 160, 160
HW_A, HW_B = (480, 640), (400, 800)
THRESHOLD = 0.3
#: the widest disparity range: nothing is masked by it (the reference has no range)
ANY_DISPARITY = (-1e9, 1e9)


def model_outputs(seed=0, hw_b=HW_B, shift_px=(-30.0, 0.0)):
    """A smooth warp (A px -> B px: scale, shear, a bump, ``shift_px``), certainties over the
    whole [0, 1] range and random SPD covariances, as a matcher returns them."""
    rng = np.random.default_rng(seed)
    j, i = np.meshgrid(np.arange(WO), np.arange(HO), indexing='xy')
    u, v = (j + 0.5) * HW_A[1] / WO - 0.5, (i + 0.5) * HW_A[0] / HO - 0.5
    xb = u * hw_b[1] / HW_A[1] * 0.97 + 0.02 * v + 3 * np.sin(v / 40) + shift_px[0]
    yb = v * hw_b[0] / HW_A[0] * 1.01 - 0.01 * u + shift_px[1]
    warp = np.stack([(2 * xb + 1) / hw_b[1] - 1, (2 * yb + 1) / hw_b[0] - 1], -1)
    overlap = rng.uniform(0, 1, (HO, WO, 1))
    L = rng.normal(0, 0.6, (HO, WO, 2, 2))
    cov = L @ np.swapaxes(L, -1, -2) + 0.05 * np.eye(2)
    return [torch.tensor(a, dtype=torch.float32) for a in (warp, overlap, cov)]


def grid(seed=0, **kw) -> PairGrid:
    return PairGrid(*model_outputs(seed, **kw), HW_A, HW_B, THRESHOLD)


def test_dense_maps_equal_the_host_reference():
    g = grid()
    want_warp, want_cert, want_cov, want_valid = ref.upsample(*model_outputs(), HW_A, HW_B,
                                                              THRESHOLD)
    got = {k: v.numpy() for k, v in dense_maps(g, DENSE_KEYS).items()}
    assert 0.2 < want_valid.mean() < 0.9                    # both kinds of pixels present
    valid = np.isfinite(got['warp']).all(-1)
    edge = near_edge(g, HW_B)
    np.testing.assert_array_equal(valid[~edge], want_valid[~edge])
    both = valid & want_valid
    # upsampled, then converted (the reference: converted, then upsampled): float32 rounding
    # of values up to 800 px
    np.testing.assert_allclose(got['warp'][both], want_warp[both], rtol=1e-6, atol=2e-4)
    np.testing.assert_array_equal(np.isnan(got['warp'][~valid]), True)
    # One lerp per axis against the reference's F.interpolate weighted sum with the same taps:
    # float32 rounding, relative to the largest value mixed (1e-5: ~80 ulps; a wrong tap or
    # axis is off by a fair part of the neighbours' differences, 1e-2 and more)
    np.testing.assert_allclose(got['certainty'], want_cert, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got['covariance'][both], want_cov[both], rtol=0,
                               atol=1e-5 * np.abs(want_cov[both]).max())
    assert np.isnan(got['covariance'][~valid]).all()
    # a subset of the maps is the same subset of the values
    alone = dense_maps(grid(), ('certainty',))
    assert set(alone) == {'certainty'}
    np.testing.assert_array_equal(alone['certainty'].numpy(), got['certainty'])
    assert got['warp'].flags.c_contiguous and got['covariance'].flags.c_contiguous


def near_edge(g: PairGrid, hw_b, tol_px=1e-3):
    """``[H x W]`` pixels whose upsampled match lies within ``tol_px`` of B's pixel edges
    (or certainty of the threshold): float rounding decides their validity either way."""
    warp = upsample(g.warp, g.hw_a).numpy().astype(np.float64)        # as upsampled
    x = (warp[0] + 1) * hw_b[1] / 2 - 0.5
    y = (warp[1] + 1) * hw_b[0] / 2 - 0.5
    c = upsample(g.overlap, g.hw_a)[0].numpy()
    return (np.minimum(np.abs(x + 0.5), np.abs(x - hw_b[1] + 0.5)) < tol_px) | \
        (np.minimum(np.abs(y + 0.5), np.abs(y - hw_b[0] + 0.5)) < tol_px) | \
        (np.abs(c - g.threshold) < 1e-6)


def real_rig():
    """A rectified rig from cv2.stereoRectify: R_left is not the identity, cx_l != cx_r."""
    K = np.array([[700.0, 0, 330.0], [0, 705.0, 238.0], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.01, -0.025, 0.015]))[0]
    T = np.array([-0.12, 0.004, 0.002])
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(K, np.zeros(5), K, np.zeros(5), (640, 480), R,
                                                T, alpha=0)
    P2 = P2.copy()
    P2[0, 2] += 7.5                                        # a principal-point offset (doffs)
    return RectifiedStereo(P1, P2, R1, R2)


@pytest.mark.parametrize('frame', ['rectified', 'optical'])
@pytest.mark.parametrize('stride', [1, 3])
def test_stereo_maps_equal_the_host_reference(frame, stride):
    rig = real_rig()
    outputs = model_outputs(1, hw_b=HW_A, shift_px=(-25.0, 0.5))   # right image = left's size
    g = PairGrid(*outputs, HW_A, HW_A, THRESHOLD)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    got = stereo_maps(g, rig, torch.from_numpy(image).permute(2, 0, 1),
                      ('disparity', 'depth', 'depth_stddev', 'points'), ANY_DISPARITY,
                      PointCloudLayout(frame, stride, organized=True))
    warp, _, cov, valid = ref.upsample(*outputs, HW_A, HW_A, THRESHOLD)
    d = ref.disparity(rig.P_left, rig.P_right, warp[..., 0])
    z = ref.depth(rig.P_right, d)
    sigma = ref.depth_stddev(rig.P_right, z, cov[..., 0])
    pts = ref.points(rig.P_left, rig.R_left, z, rotate=frame == 'optical')
    assert (z > 0).mean() > 0.3 and np.isnan(z).mean() > 0.1
    # where float rounding puts a match on either side of B's edge, either answer is right
    edge = near_edge(g, HW_A)
    d[edge] = z[edge] = sigma[edge] = np.nan
    pts[edge] = np.nan
    for key in ('disparity', 'depth', 'depth_stddev'):
        got[key][torch.from_numpy(edge)] = float('nan')
    got['points'][..., :3][torch.from_numpy(edge[::stride, ::stride])] = float('nan')
    # float32 on the device (upsampled, then converted) vs float64 rounded to float32
    np.testing.assert_allclose(got['disparity'].numpy(), d, rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(got['depth'].numpy(), z, rtol=2e-5)
    np.testing.assert_allclose(got['depth_stddev'].numpy(), sigma, rtol=5e-5)
    cloud = np.frombuffer(ref.cloud_bytes(pts, image, True, stride), np.float32)
    cloud = cloud.reshape(got['points'].shape)
    np.testing.assert_allclose(got['points'].numpy()[..., :3], cloud[..., :3], rtol=2e-5,
                               atol=1e-6)
    # the colours bit for bit (float32 views of uint32 0x00RRGGBB)
    np.testing.assert_array_equal(got['points'].numpy()[..., 3].view(np.uint32),
                                  cloud[..., 3].view(np.uint32))


def test_unorganised_points_are_the_valid_ones_in_row_order():
    rig = real_rig()
    outputs = model_outputs(3, hw_b=HW_A, shift_px=(-25.0, 0.0))
    g = PairGrid(*outputs, HW_A, HW_A, THRESHOLD)
    image = np.random.default_rng(4).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    got = stereo_maps(g, rig, torch.from_numpy(image).permute(2, 0, 1), ('points',),
                      ANY_DISPARITY, PointCloudLayout('rectified', 2, organized=False))
    warp, _, _, _ = ref.upsample(*outputs, HW_A, HW_A, THRESHOLD)
    z = ref.depth(rig.P_right, ref.disparity(rig.P_left, rig.P_right, warp[..., 0]))
    want = np.frombuffer(ref.cloud_bytes(ref.points(rig.P_left, rig.R_left, z, False), image,
                                         False, 2), np.float32).reshape(-1, 4)
    n = int(got['points_count'])
    assert n == len(want) and 0 < n < 240 * 320
    np.testing.assert_allclose(got['points'].numpy()[:n, :3], want[:, :3], rtol=1e-5)
    np.testing.assert_array_equal(got['points'].numpy()[:n, 3].view(np.uint32),
                                  want[:, 3].view(np.uint32))


def test_the_disparity_range_invalidates_every_stereo_map():
    rig = real_rig()
    outputs = model_outputs(1, hw_b=HW_A, shift_px=(-25.0, 0.0))
    g = PairGrid(*outputs, HW_A, HW_A, THRESHOLD)
    image = torch.zeros(3, 480, 640, dtype=torch.uint8)
    full = stereo_maps(g, rig, image, ('disparity',), ANY_DISPARITY, PointCloudLayout())
    d_all = full['disparity'].numpy()
    lo, hi = np.nanpercentile(d_all, [20, 80])
    cut = stereo_maps(g, rig, image, ('disparity', 'depth', 'depth_stddev', 'points'),
                      (lo, hi), PointCloudLayout())
    inside = (d_all >= lo) & (d_all <= hi)
    np.testing.assert_array_equal(np.isfinite(cut['disparity'].numpy()), inside)
    for key in ('depth', 'depth_stddev'):
        assert not np.isfinite(cut[key].numpy()[~inside]).any()
    assert not np.isfinite(cut['points'].numpy()[~inside][:, :3]).any()


def test_health_equals_the_host_reference_on_every_eighth_cell():
    g = grid(5)
    pa, pb, _, _, valid = ref.grid_matches(*model_outputs(5), HW_A, HW_B, THRESHOLD,
                                           stride=CHECK_STRIDE)
    want = ref.vertical_disparity(pa[valid], pb[valid])
    got = health(g).tolist()
    assert got[2] == want[2] > 100
    assert got[:2] == pytest.approx(want[:2], rel=1e-5, abs=1e-5)


def test_tracking_shares_are_the_valid_shares_and_median_flow():
    g = grid(6)
    pa, pb, _, _, valid = ref.grid_matches(*model_outputs(6), HW_A, HW_B, THRESHOLD,
                                           stride=CHECK_STRIDE)
    stereo_share, temporal_share, flow = tracking_shares(g, g).tolist()
    assert stereo_share == temporal_share == pytest.approx(valid.mean())
    want = np.median(np.linalg.norm(pb[valid] - pa[valid], axis=1)) / HW_A[1]
    assert flow == pytest.approx(want, rel=1e-5)
    assert np.isnan(tracking_shares(g, None)[1:].numpy()).all()


def mask_at(mask):
    """An ``[H_o x W_o]`` mask as the sampler's predicate of flat cell indices."""
    flat = torch.as_tensor(mask).reshape(-1)
    return lambda index: flat[index]


def draw(g, num, seed, usable=None):
    gen = torch.Generator().manual_seed(seed)
    out = sample_matches(g, num, gen, None if usable is None else mask_at(usable))
    return out, Samples.from_host(out['samples'].numpy(), out['drawn'].numpy())


def test_samples_are_grid_matches_and_their_values():
    g = grid(7)
    pa, pb, certainty, cov, valid = ref.grid_matches(*model_outputs(7), HW_A, HW_B, THRESHOLD)
    out, s = draw(g, 500, seed=1)
    assert len(s) == 500
    # every sample is a valid grid cell with that cell's values
    key = {tuple(np.round(p, 3)): k for k, p in enumerate(pa)}
    idx = np.array([key[tuple(np.round(p, 3))] for p in s.points_a])
    assert len(set(idx)) == 500 and valid[idx].all()
    np.testing.assert_allclose(s.points_b, pb[idx], rtol=1e-6)
    np.testing.assert_allclose(s.certainty, certainty[idx], rtol=1e-6)
    np.testing.assert_allclose(s.cov_b, cov[idx], rtol=1e-5)
    # reproducible: a generator seeded alike draws alike
    again, _ = draw(g, 500, seed=1)
    np.testing.assert_array_equal(again['samples'].numpy(), out['samples'].numpy())


def test_fewer_usable_matches_than_asked_gives_all_of_them():
    g = grid(8)
    usable = torch.zeros(HO, WO, dtype=torch.bool)
    usable[10:20, 30:40] = True                        # 100 cells, some of certainty ~0
    usable &= g.overlap[..., 0] > 0
    _, s = draw(g, 400, seed=3, usable=usable)
    assert len(s) == int(usable.sum())
    # a certainty of exactly zero is never drawn, even when every cell counts as usable
    # (certainty_threshold 0: numpy's choice raised "Fewer non-zero entries in p than size")
    zero = PairGrid(*model_outputs(8), HW_A, HW_B, 0.0)
    zero.overlap[:] = 0
    zero.overlap[0, :10] = 0.5
    _, s = draw(zero, 50, seed=4, usable=torch.ones(HO, WO, dtype=torch.bool))
    assert len(s) == 10 and (s.certainty == 0.5).all()


def test_metric_usable_cells_are_valid_in_both_pairs_with_a_disparity_and_variance():
    rig = real_rig()
    stereo = PairGrid(*model_outputs(3, hw_b=HW_A, shift_px=(-25.0, 0.5)), HW_A, HW_A,
                      THRESHOLD)
    stereo.covariance[::7, ::5, 0, 0] = -1.0             # not a variance: never usable
    stereo.covariance[1::9, ::4, 0, 0] = float('nan')
    temporal = grid(4)
    pa, pb, _, cov, valid_s = ref.grid_matches(stereo.warp, stereo.overlap, stereo.covariance,
                                               HW_A, HW_A, THRESHOLD)
    *_, valid_t = ref.grid_matches(*model_outputs(4), HW_A, HW_B, THRESHOLD)
    min_disparity = 20.0
    disparity = pa[:, 0] - pb[:, 0] - (rig.P_left[0, 2] - rig.P_right[0, 2])
    want = valid_s & valid_t & (disparity >= min_disparity) & (cov[:, 0, 0] > 0)
    # the disparity bound decided in normalised units: float32 rounding near the bound
    edge = np.abs(disparity - min_disparity) < 1e-3
    assert 0.1 < want.mean() < 0.6 and edge.sum() < 5      # every condition removes cells
    usable_at = metric_usable(stereo, temporal, rig, min_disparity)
    got = usable_at(torch.arange(HO * WO)).numpy()
    np.testing.assert_array_equal(got[~edge], want[~edge])
    # asked about some cells, in any order: the same answers
    some = torch.randperm(HO * WO, generator=torch.Generator().manual_seed(0))[:999]
    np.testing.assert_array_equal(usable_at(some).numpy(), got[some.numpy()])


@pytest.mark.parametrize('ho, wo, num, unusable', [(40, 40, 60, 0.2), (96, 128, 60, 0.2),
                                                   (96, 128, 60, 0.85)])
def test_sampling_draws_as_the_host_sampler_did(ho, wo, num, unusable):
    """The device sampler (Efraimidis-Spirakis keys) and the host's sequential draws without
    replacement are the same distribution: over many seeds both pick each 8 x 8 block of
    cells equally often (two-sample chi-square; both samplers seeded, so deterministic). The
    larger grid takes the CPU's path that draws only the keys below a level (more than
    PREFILTER times the 4 num candidates) and asks which of those are usable; with most
    cells unusable too (the level then comes from the usable share of the weight)."""
    rng = np.random.default_rng(9)
    certainty = np.clip(rng.uniform(0, 1, (ho, wo)) * np.linspace(0.2, 1, wo)[None], 0, 1)
    usable = rng.uniform(0, 1, (ho, wo)) > unusable
    warp = torch.zeros(ho, wo, 2)
    hw = (3 * ho, 4 * wo)
    g = PairGrid(warp, torch.tensor(certainty[..., None], dtype=torch.float32),
                 torch.eye(2).expand(ho, wo, 2, 2), hw, hw, 0.0)
    pa = g.points_a.numpy().reshape(-1, 2).astype(np.float64)
    idx_usable = np.flatnonzero(usable)
    blocks = (np.arange(ho)[:, None] // 8 * (wo // 8) + np.arange(wo)[None] // 8).ravel()
    counts = np.zeros((2, blocks.max() + 1))
    for seed in range(300):
        out = sample_matches(g, num, torch.Generator().manual_seed(seed), mask_at(usable))
        s = Samples.from_host(out['samples'].numpy(), out['drawn'].numpy())
        cells = np.rint((s.points_a[:, 1] + 0.5) / 3 - 0.5).astype(int) * wo + \
            np.rint((s.points_a[:, 0] + 0.5) / 4 - 0.5).astype(int)
        np.add.at(counts[0], blocks[cells], 1)
        host = idx_usable[ref.balanced_indices(pa[idx_usable], certainty.ravel()[idx_usable],
                                               num, np.random.default_rng(seed), hw)]
        np.add.at(counts[1], blocks[host], 1)
    assert counts[0].sum() == counts[1].sum() == 300 * num
    assert (PREFILTER * 4 * num < ho * wo) == (ho == 96)      # the path each case takes
    assert chi2_contingency(counts)[1] > 1e-3


@pytest.mark.parametrize('ho, wo', [(40, 40), (96, 128)])
def test_negative_certainties_are_never_drawn(ho, wo):
    """A matcher's certainty below 0 weighs as 0 on both of the CPU's paths (the smaller grid
    draws a key for every cell, the larger only for the cells below a level)."""
    rng = np.random.default_rng(5)
    certainty = rng.uniform(-1, 1, (ho, wo)).astype(np.float32)
    hw = (3 * ho, 4 * wo)
    g = PairGrid(torch.zeros(ho, wo, 2), torch.tensor(certainty[..., None]),
                 torch.eye(2).expand(ho, wo, 2, 2), hw, hw, -2.0)    # every cell valid
    positive = int((certainty > 0).sum())
    for seed in range(20):
        out = sample_matches(g, 60, torch.Generator().manual_seed(seed))
        s = Samples.from_host(out['samples'].numpy(), out['drawn'].numpy())
        assert len(s) == 60 and (s.certainty > 0).all() and positive > 4 * 60


@pytest.mark.gpu
def test_products_on_cuda_equal_the_cpu():
    rig = real_rig()
    outputs = model_outputs(1, hw_b=HW_A, shift_px=(-25.0, 0.0))
    image = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
    results = []
    for device in ('cpu', 'cuda'):
        g = PairGrid(*(t.to(device) for t in outputs), HW_A, HW_A, THRESHOLD)
        out = dense_maps(g, DENSE_KEYS)
        out.update(stereo_maps(g, rig, image.to(device),
                               ('disparity', 'depth', 'depth_stddev', 'points'), ANY_DISPARITY,
                               PointCloudLayout('optical', 2, organized=False)))
        out['health'] = health(g)
        results.append({k: v.cpu().numpy() for k, v in out.items()})
    cpu, cuda = results
    for key in cpu:
        np.testing.assert_allclose(cuda[key], cpu[key], rtol=1e-5, atol=1e-5, err_msg=key)
