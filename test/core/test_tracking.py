"""Keyframe tracking (romav2_core/tracking.py): the keyframe decisions, the odometry composed
from keyframe-relative poses, and the covariance of a step between two frames of one keyframe.

Oracles: 4x4 homogeneous matrices for the compositions, Monte Carlo (on the manifold, with the
fixed-axes convention of odometry.py) for the covariance of :func:`relative_step`.
"""
import cv2
import numpy as np
import pytest

from romav2_core.pose import PoseEstimate
from romav2_core.tracking import (LOST_VARIANCE, KeyframeOdometry, KeyframePolicy,
                                  KeyframeSelector, TrackingStats, relative_step)

STILL = TrackingStats(covisible_share=0.8, flow=0.0, stereo_share=0.8)


def estimate(rvec, t, cov=None):
    R = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    return PoseEstimate(R=R, t=np.asarray(t, np.float64),
                        covariance=np.eye(6) * 1e-6 if cov is None else cov,
                        inliers=np.ones(1, bool), num_matches=100, num_inliers=90,
                        mean_epipolar_error=np.nan, scale_observable=True)


def H(R, t):
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, t
    return M


def test_a_still_camera_keeps_its_first_keyframe():
    sel = KeyframeSelector()
    plans = []
    for k in range(200):
        ref = sel.reference()
        plans.append(sel.plan(f'frame{k}', STILL if ref else STILL, ref))
    assert plans[0].segment_start and plans[0].new_keyframe.id == 0
    assert all(p.tracked and p.new_keyframe is None and p.reference.id == 0
               for p in plans[1:])
    assert plans[-1].frames_since_keyframe == 199


@pytest.mark.parametrize('stats, why', [
    (TrackingStats(0.5, 0.02, 0.8), 'covisibility 0.62 < 0.7'),     # 0.5 / 0.8 of the keyframe's
    (TrackingStats(0.8, 0.15, 0.8), 'flow 0.150 > 0.1 of the image width'),
])
def test_a_frame_becomes_the_keyframe_when_tracking_weakens(stats, why):
    sel = KeyframeSelector()
    sel.plan('frame0', STILL, sel.reference())
    first = sel.reference()
    plan = sel.plan('frame1', stats, first)
    assert plan.tracked and plan.new_keyframe.id == 1 and plan.reason == why
    assert plan.new_keyframe.parent is first and sel.reference() is plan.new_keyframe
    assert sel.reference().frame == 'frame1'


def test_lost_frames_keep_the_keyframe_then_a_new_segment_starts():
    policy = KeyframePolicy(max_lost_frames=3)
    sel = KeyframeSelector(policy)
    sel.plan('frame0', STILL, sel.reference())
    kf = sel.reference()
    covered = TrackingStats(0.0, float('nan'), 0.0)      # a covered lens: no stereo either
    elsewhere = TrackingStats(0.05, 0.3, 0.8)             # another place: stereo works
    for k in range(1, 5):
        plan = sel.plan(f'frame{k}', covered, sel.reference())
        assert not plan.tracked and plan.new_keyframe is None and sel.reference() is kf
    # a usable frame after more than max_lost_frames lost ones starts a new segment
    plan = sel.plan('frame5', elsewhere, sel.reference())
    assert plan.segment_start and plan.new_keyframe.frame == 'frame5'
    assert 'new segment' in plan.reason
    # a frame that tracks again resets the count
    sel2 = KeyframeSelector(policy)
    sel2.plan('a', STILL, None)
    for stats in (covered, covered, STILL, covered, covered, covered):
        plan = sel2.plan('b', stats, sel2.reference())
        assert not plan.segment_start


def test_a_keyframe_whose_pose_failed_gives_way_to_its_parent():
    sel = KeyframeSelector()
    sel.plan('frame0', STILL, sel.reference())
    k0 = sel.reference()
    k1 = sel.plan('frame1', TrackingStats(0.4, 0.0, 0.8), k0).new_keyframe
    k2 = sel.plan('frame2', TrackingStats(0.4, 0.0, 0.8), k1).new_keyframe
    assert sel.reference() is k2
    sel.keyframe_failed(k1.id)                     # k2 was posed from k1: both go
    assert sel.reference() is k0
    # the first keyframe of a segment cannot fail (its pose is given): a failed root
    # means a new segment
    sel.keyframe_failed(k0.id)
    k0.posed = False
    assert sel.reference() is None and 'could not be posed' in sel.restart_reason


def test_posed_keyframes_let_go_of_their_ancestors():
    sel = KeyframeSelector()
    odo = KeyframeOdometry()
    weak = TrackingStats(0.4, 0.0, 0.8)
    step = estimate([0, 0, 0], [0.1, 0, 0])
    odo.update(sel.plan('frame0', STILL, sel.reference()), None, 0.0)
    chain = []
    for k in range(1, 6):
        plan = sel.plan(f'frame{k}', weak, sel.reference())
        odo.update(plan, step, 0.1 * k, sel)
        chain.append(plan.new_keyframe)
    sel.reference()
    assert all(kf.posed for kf in chain) and chain[-1].parent is None


def test_poses_compose_from_the_keyframe_without_accumulating():
    """Frames posed against one keyframe: each is the keyframe's pose times its own estimate
    (4x4 matrices), whatever the frames before it gave."""
    sel, odo = KeyframeSelector(), KeyframeOdometry()
    first = odo.update(sel.plan('f0', STILL, sel.reference()), None, 0.0)
    assert first.state == 'RESET' and not first.publish and first.segment == 0
    E1 = estimate([0.01, -0.02, 0.005], [0.2, 0.01, 0.3])
    kf_plan = sel.plan('f1', TrackingStats(0.4, 0.0, 0.8), sel.reference())
    s1 = odo.update(kf_plan, E1, 0.1, sel)
    assert s1.state == 'OK' and s1.new_keyframe
    E2, E3 = estimate([0, 0.01, 0], [0.1, 0, 0.2]), estimate([0, 0.012, 0], [0.13, 0, 0.25])
    s2 = odo.update(sel.plan('f2', STILL, sel.reference()), E2, 0.2, sel)
    s3 = odo.update(sel.plan('f3', STILL, sel.reference()), E3, 0.3, sel)
    for s, E in ((s2, E2), (s3, E3)):
        want = H(E1.R, E1.t) @ H(E.R, E.t)
        np.testing.assert_allclose(H(s.R, s.p), want, atol=1e-12)
        assert s.keyframe_id == 1
    # frame 3's twist is the step from frame 2 over 0.1 s: E2^-1 E3 in frame 3's axes
    step = np.linalg.inv(H(E2.R, E2.t)) @ H(E3.R, E3.t)
    np.testing.assert_allclose(s3.linear, step[:3, :3].T @ step[:3, 3] / 0.1, atol=1e-9)


def test_lost_frames_hold_the_pose_with_an_inflated_covariance_and_recovery_continues():
    sel, odo = KeyframeSelector(), KeyframeOdometry()
    odo.update(sel.plan('f0', STILL, sel.reference()), None, 0.0)
    E = estimate([0, 0.01, 0], [0.1, 0, 0.2], cov=np.eye(6) * 1e-4)
    ok = odo.update(sel.plan('f1', STILL, sel.reference()), E, 0.1, sel)
    lost = [odo.update(sel.plan(f'f{k}', STILL, sel.reference()), None, 0.1 * k, sel)
            for k in (2, 3, 4)]
    for s in lost:
        assert s.state == 'LOST' and s.publish
        np.testing.assert_array_equal(s.p, ok.p)
        np.testing.assert_allclose(s.covariance, ok.covariance + LOST_VARIANCE * np.eye(6))
        assert np.all(np.diag(s.twist_covariance) >= 1e3)       # velocity unknown
    E5 = estimate([0, 0.02, 0], [0.3, 0, 0.6], cov=np.eye(6) * 1e-4)
    back = odo.update(sel.plan('f5', STILL, sel.reference()), E5, 0.5, sel)
    assert back.state == 'OK' and back.segment == 0             # recovered, same segment
    np.testing.assert_allclose(H(back.R, back.p), H(E5.R, E5.t), atol=1e-12)
    # the twist spans the gap: frame 1 to frame 5 over 0.4 s
    step = np.linalg.inv(H(E.R, E.t)) @ H(E5.R, E5.t)
    np.testing.assert_allclose(back.linear, step[:3, :3].T @ step[:3, 3] / 0.4, atol=1e-9)


def test_a_new_segment_starts_from_the_last_pose_never_surer():
    sel, odo = KeyframeSelector(), KeyframeOdometry()
    odo.update(sel.plan('f0', STILL, sel.reference()), None, 0.0)
    ok = odo.update(sel.plan('f1', STILL, sel.reference()),
                    estimate([0, 0.01, 0], [0.1, 0, 0.2], np.eye(6) * 1e-4), 0.1, sel)
    sel.reset('stamp jump')
    restart = odo.update(sel.plan('f2', STILL, sel.reference()), None, 9.0)
    assert restart.state == 'RESET' and restart.segment == 1 and restart.publish
    np.testing.assert_array_equal(restart.p, ok.p)
    assert np.all(np.linalg.eigvalsh(restart.covariance - ok.covariance) >= LOST_VARIANCE - 1e-6)
    after = odo.update(sel.plan('f3', STILL, sel.reference()),
                       estimate([0, 0, 0], [0.1, 0, 0], np.eye(6) * 1e-4), 9.1, sel)
    # composed on the inflated pose: still far less sure than anything before the gap
    assert after.segment == 1
    assert np.linalg.eigvalsh(after.covariance - ok.covariance).min() > 0.5 * LOST_VARIANCE


def test_a_failed_keyframe_is_reported_to_the_selector():
    sel, odo = KeyframeSelector(), KeyframeOdometry()
    odo.update(sel.plan('f0', STILL, sel.reference()), None, 0.0)
    k0 = sel.reference()
    plan = sel.plan('f1', TrackingStats(0.4, 0.0, 0.8), k0)        # to become keyframe 1
    assert odo.update(plan, None, 0.1, sel).state == 'LOST'         # ... but no pose
    assert sel.reference() is k0


def _exp(w):
    return cv2.Rodrigues(np.asarray(w, np.float64))[0]


def test_relative_step_covariance_against_monte_carlo():
    """Two independent keyframe-relative estimates with anisotropic, correlated covariances:
    the step's 6x6 covariance (fixed axes of frame a) against the sample covariance of the
    exact step over perturbed poses. 20,000 samples: a sample variance's relative standard
    error is sqrt(2 / 20000) = 1 %, so 6 % allows for the first-order model too."""
    rng = np.random.default_rng(3)
    L = rng.normal(0, 1, (2, 6, 6)) * np.array([0.02, 0.01, 0.03, 0.004, 0.002, 0.003])[:, None]
    covs = L @ L.transpose(0, 2, 1) + 1e-6 * np.eye(6)
    a = estimate([0.05, -0.1, 0.02], [0.4, -0.1, 1.2], covs[0])
    b = estimate([0.02, 0.3, -0.05], [1.1, 0.2, 2.5], covs[1])
    R, t, cov = relative_step(a, b)
    np.testing.assert_allclose(H(R, t), np.linalg.inv(H(a.R, a.t)) @ H(b.R, b.t), atol=1e-12)
    n = 20000
    da = rng.multivariate_normal(np.zeros(6), a.covariance, n)
    db = rng.multivariate_normal(np.zeros(6), b.covariance, n)
    errors = np.empty((n, 6))
    for i in range(n):
        Ra, ta = _exp(da[i, 3:]) @ a.R, a.t + da[i, :3]
        Rb, tb = _exp(db[i, 3:]) @ b.R, b.t + db[i, :3]
        Rs, ts = Ra.T @ Rb, Ra.T @ (tb - ta)
        errors[i] = np.r_[ts - t, cv2.Rodrigues(Rs @ R.T)[0].ravel()]
    sample = np.cov(errors.T)
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.abs(sample - cov).max() / scale.max() < 0.06
    np.testing.assert_allclose(np.diag(sample), np.diag(cov), rtol=0.06)
