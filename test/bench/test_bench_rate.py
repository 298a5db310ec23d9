"""bench/bench_rate.py and its TIMING STAND-IN (bench/timing_standin.py).

The stand-in's outputs are checked against OpenCV's two-view geometry and the scene's true
poses (``StereoTrajectory.relative``), not against the warp code that made them; the benchmark
end to end at its smallest size (``--smoke``: the installed node, a publisher and a subscriber
in three processes), its accounting against the node's own counters, and its table.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'bench'))

import timing_standin as ts  # noqa: E402
from oracle_matchers import BASELINE, FOCAL, H, K, W, StereoTrajectory  # noqa: E402
from romav2_core.config import RoMaV2Config  # noqa: E402

#: A non-square grid over the 640 x 480 images: a swapped axis changes every check below.
GRID = (96, 160)


def tagged(side: int) -> torch.Tensor:
    """A random ``[1 x 3 x H x W]`` uint8 image tagged as left (1) or right (2)."""
    img = torch.randint(0, 256, (1, 3, H, W), dtype=torch.uint8)
    img[0, :, 0, 0] = torch.tensor([3, side, ts.TAG_BLUE])
    return img


def matches_px(out: dict, i: int = 0):
    """(points of A, points of B, certainty) of batch element ``i``: OpenCV px from the
    normalised warp by its definition (``x_cv = (x_n + 1) / 2 * W - 0.5``)."""
    ho, wo = out['warp_AB'].shape[1:3]
    jj, ii = np.meshgrid(np.arange(wo), np.arange(ho), indexing='xy')
    a = np.stack([(jj + 0.5) * W / wo - 0.5, (ii + 0.5) * H / ho - 0.5], -1)
    warp = out['warp_AB'][i].numpy().astype(np.float64)
    b = np.stack([(warp[..., 0] + 1) / 2 * W - 0.5, (warp[..., 1] + 1) / 2 * H - 0.5], -1)
    return a.reshape(-1, 2), b.reshape(-1, 2), out['overlap_AB'][i, ..., 0].numpy().ravel()


@pytest.fixture(scope='module')
def standin():
    return ts.TimingStandIn(GRID, model_ms=20.0)


@pytest.fixture(scope='module')
def pairs(standin):
    """The stand-in's output for one batch of a stereo and a temporal pair."""
    left, right, earlier = (standin.encode(tagged(s)) for s in (1, 2, 1))
    cat = type(left).cat
    return standin.match_features(cat([left, left]), cat([right, earlier]))


@pytest.mark.parametrize('setting,overrides,grid', [
    ('turbo', dict(H_lr=128, W_lr=192), (128, 192)),                        # no HR pass
    ('precise', dict(H_lr=96, W_lr=128, H_hr=160, W_hr=224), (160, 224)),  # the HR grid
])
def test_output_grid_is_the_real_models(setting, overrides, grid):
    cfg = RoMaV2Config.from_setting(setting, **overrides)
    matcher = ts.stand_in(config=cfg, device='cpu')
    out = matcher.match_features(*(matcher.encode(tagged(s)) for s in (1, 2)))
    assert matcher.output_hw == grid
    assert out['warp_AB'].shape == (1, *grid, 2)
    assert out['overlap_AB'].shape == (1, *grid, 1)
    assert out['covariance_AB'].shape == (1, *grid, 2, 2)


def test_stereo_pairs_are_a_rectified_rig(pairs):
    a, b, certainty = matches_px(pairs, 0)
    ok = certainty >= 0.05
    # mostly confident, some not (the node's default threshold is 0.05)
    assert 0.8 < ok.mean() < 0.95 and np.median(certainty[ok]) > 0.7
    F, mask = cv2.findFundamentalMat(a[ok], b[ok], cv2.FM_RANSAC, 1.5, 0.999)
    inl = mask.ravel().astype(bool)
    # the outliers are uniform in B: a few land on their epipolar line by chance
    assert inl.mean() == pytest.approx(1 - ts.OUTLIER_SHARE, abs=0.04)
    pa, pb = a[ok][inl], b[ok][inl]
    assert np.median(np.abs(pa[:, 1] - pb[:, 1])) < 3 * ts.NOISE_PX     # rows kept: rectified
    disparity = pa[:, 0] - pb[:, 0]
    assert np.mean(disparity > 0) > 0.99
    depth = FOCAL * BASELINE / disparity[disparity > 0]
    # the rig of frame 4 sees the surface z = 6 +- 0.8 m from 0.6 m forward
    assert 4.0 < np.percentile(depth, 5) and np.percentile(depth, 95) < 7.0


def sampson_px(F: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """First-order distance (px) of matches a -> b from the epipolar geometry b^T F a = 0."""
    ha, hb = np.c_[a, np.ones(len(a))], np.c_[b, np.ones(len(b))]
    Fa, Ftb = ha @ F.T, hb @ F
    return np.abs(np.sum(hb * Fa, 1)) / np.sqrt(Fa[:, 0] ** 2 + Fa[:, 1] ** 2 +
                                                 Ftb[:, 0] ** 2 + Ftb[:, 1] ** 2)


def test_temporal_pairs_are_a_rigid_motion_with_outliers(pairs):
    a, b, certainty = matches_px(pairs, 1)
    ok = certainty >= 0.05
    # the scene's true motion of the left camera between the frames: p_B = R p_A + t
    R, t = StereoTrajectory(frames=ts.FRAME + 1).relative(ts.FRAME)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F_true = np.linalg.inv(K).T @ tx @ R @ np.linalg.inv(K)
    d = sampson_px(F_true, a[ok], b[ok])
    # inliers: noise of NOISE_PX per coordinate in B only, whose Sampson distance is its
    # component across the epipolar line / sqrt(2) (sigma 0.35 px); outliers: uniform in B,
    # a few land near their line by chance
    assert np.mean(d < 4 * ts.NOISE_PX) == pytest.approx(1 - ts.OUTLIER_SHARE, abs=0.04)
    # all matches' median: the 0.59 quantile of the inliers' |N(0, 0.35)| = 0.29 px (the
    # motion of the frames before, nearly the same, gives 0.42 px)
    assert np.median(d) < 0.35
    # and RANSAC finds that share too (the pose estimators' work)
    _, mask = cv2.findEssentialMat(a[ok], b[ok], K, cv2.RANSAC, 0.999, 1.0)
    assert mask.mean() == pytest.approx(1 - ts.OUTLIER_SHARE, abs=0.04)


def test_covariance_is_in_px2_of_the_output_grid(pairs):
    cov = pairs['covariance_AB'][0].numpy().astype(np.float64)
    ho, wo = GRID
    # one isotropic image-px variance, seen on cells W/wo wide and H/ho tall
    ratio = cov[..., 0, 0] / cov[..., 1, 1]
    np.testing.assert_allclose(ratio, ((wo / W) / (ho / H)) ** 2, rtol=1e-5)
    assert np.all(cov[..., 0, 1] == 0) and np.all(cov[..., 0, 0] > 0)


def test_pairs_by_tag_precomputed_and_one_sleep_per_call(standin, pairs):
    left, right, earlier = (standin.encode(tagged(s)) for s in (1, 2, 1))
    stereo = standin.match_features(left, right)
    temporal = standin.match_features(left, earlier)
    untagged = standin.encode(torch.randint(0, 256, (2, 3, 640, 640), dtype=torch.uint8))
    warm_up = standin.match_features(untagged[:1], untagged[1:])   # the node's warm-up
    for key in ('warp_AB', 'overlap_AB', 'covariance_AB'):
        assert torch.equal(pairs[key][0], stereo[key][0])
        assert torch.equal(pairs[key][1], temporal[key][0])
        assert torch.equal(warm_up[key], stereo[key])
    # nothing computed per call: the same tensors again
    assert standin.match_features(left, right)['warp_AB'] is stereo['warp_AB']
    t0 = time.perf_counter()
    standin.match_features(left, right)
    assert time.perf_counter() - t0 >= standin.model_s


def test_bench_rate_refuses_without_loopback_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID')}
    out = subprocess.run([sys.executable, str(ROOT / 'bench/bench_rate.py'), '--smoke'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and 'unshare --net' in out.stderr


@pytest.mark.ros
@pytest.mark.slow
def test_bench_rate_smoke(ros_env_guard):
    """Two nodes (stereo: every output but the pictures; stereo_odometry: odometry + /tf),
    the peak search at 2 then 4 Hz; the subscriber's sets agree with the node's counters."""
    out = subprocess.run([sys.executable, str(ROOT / 'bench/bench_rate.py'), '--smoke', '--peak',
                          '--case', 'all_outputs', 'odometry_tf'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout)
    assert r['benchmark'] == 'node_rate' and r['model']['model_ms'] == 32.0
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert head[:7] in r['code'] if head else r['code'].startswith('unknown')
    assert r['model']['output_grid_hw'] == [320, 320]          # --smoke: turbo
    cases = {c['case']: c for c in r['cases']}
    assert set(cases) == {'all_outputs', 'odometry_tf'}
    assert len(cases['all_outputs']['outputs']) == 10
    odometry = cases['odometry_tf']
    assert odometry['node_parameters']['publish_tf'] is True
    assert odometry['outputs'] == (['odometry', 'tf'] if odometry['tf'].startswith('measured')
                                   else ['odometry'])
    for case in cases.values():
        steps = case['steps']
        rates = [s['input_rate_hz'] for s in steps]
        assert rates in ([2.0], [2.0, 4.0])
        lost = [s['not_delivered_share'] >= r['loss_limit'] for s in steps]
        assert not any(lost[:-1]) and (len(steps) == 1 or not lost[0])  # stops at a failure
        passed = [s['input_rate_hz'] for s, bad in zip(steps, lost) if not bad]
        assert case['peak_rate_hz'] == (max(passed) if passed else None)
        for s in steps:
            # the window is at least --duration (2 s) of sets at the step's rate
            assert s['published'] >= 2 * s['input_rate_hz'] - 1
            assert s['drained'] and 0 < s['delivered'] <= s['published']
            # every published set is delivered, dropped before or after the model, or lost
            # on the way in; the node's counters are read at 1 s snapshots (+-1 at each edge)
            accounted = (s['delivered'] + s['drops_before_model'] + s['drops_after_model']
                         + s['lost_before_node'])
            assert abs(accounted - s['published']) <= 2, s
            # the stand-in's sleep is inside the node's model stage and inside every latency
            assert s['node_stage_ms']['model'] >= 0.95 * r['model']['model_ms']
            assert s['latency_ms']['median'] > r['model']['model_ms']
            assert s['model_rate_hz'] == pytest.approx(1e3 / 32.0)
    table = subprocess.run([sys.executable, str(ROOT / 'bench/results_table.py'), '/dev/stdin'],
                           input=out.stdout, capture_output=True, text=True, timeout=60,
                           check=True).stdout
    for case in cases.values():
        step = next(s for s in case['steps'] if s['input_rate_hz'] == case['peak_rate_hz'])
        assert f"| `{case['case']}`, stand-in 32 ms, `turbo`, code {r['code']} | " \
               f"{step['input_rate_hz']:g} Hz | " \
               f"{step['delivered_per_s']:.1f} sets/s" in table
