"""stereo_odometry as a VO front end, on the long synthetic sequences of test/vo_scenes.py
(a rig on a robot over rolling ground, match noise drawn from the covariance the matcher
reports): standing still, a 200 m path scored with evo against the frame-to-frame chain,
frames that cannot be matched, and the odometry of the robot's body (REP 105).

In-process through :class:`MatchingPipeline` (the node's and the replay's processing). The
frame-to-frame chain -- each frame matched against the previous one, as before keyframes -- is
the same pipeline with a new keyframe at every frame (``keyframe_flow`` 0).
"""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import vo_eval
import vo_scenes
from romav2_core.tracking import LOST_VARIANCE
from romav2_ros.pipeline import MatchingPipeline, PipelineConfig

pytestmark = pytest.mark.slow
WANTED = {'odometry', 'relative_pose_info'}
#: every frame a keyframe: the frame-to-frame chain
FRAME_TO_FRAME = dict(keyframe_flow=0.0)


def run(name, frames=None, seed=0, wanted=WANTED, **config):
    """The results of ``frames`` (default all) of scene ``name`` through the pipeline."""
    scene = vo_scenes.scene(name)
    pipe = MatchingPipeline(vo_scenes.VoOracle(scene, seed=seed),
                            PipelineConfig(mode='stereo_odometry', **config))
    return scene, [pipe.process(scene.inputs(k), wanted)
                   for k in (range(scene.frames) if frames is None else frames)]


def poses(results) -> dict:
    """Frame index -> 4x4 pose of each published ~/odometry."""
    return {k: vo_eval.pose_matrix(r.messages['odometry'].pose.pose)
            for k, r in enumerate(results) if 'odometry' in r.messages}


def trajectory(results, scene):
    """(stamps, [N x 4 x 4]) of the published odometry, for evo."""
    at = poses(results)
    return scene.stamp_s(np.array(sorted(at))), np.array([at[k] for k in sorted(at)])


def angle_deg(R):
    return float(np.degrees(Rotation.from_matrix(R).magnitude()))


@pytest.fixture(scope='module')
def stop_and_go():
    return run('stop_and_go')


def test_standing_still_neither_drifts_nor_makes_keyframes(stop_and_go):
    """120 still frames between two moving segments: the odometry moves < 5 mm and < 0.05 deg
    over the stop, its error does not grow (at the end <= 1.5x 10 frames in), and the stop
    makes no keyframe."""
    scene, results = stop_and_go
    body = scene.body
    still = [k for k in range(1, scene.frames) if np.allclose(body[k], body[k - 1])]
    first, last = still[0], still[-1]
    assert last - first == 119                       # frames first-1 .. last: one place
    at, truth = poses(results), scene.truth_camera_odom()
    moved = np.linalg.norm(at[last][:3, 3] - at[first][:3, 3])
    turned = angle_deg(at[last][:3, :3].T @ at[first][:3, :3])
    err = {k: np.linalg.norm(at[k][:3, 3] - truth[k][:3, 3]) for k in (first + 10, last)}
    keyframes = [k for k in still if results[k].messages['relative_pose_info'].new_keyframe]
    _, f2f = run('stop_and_go', **FRAME_TO_FRAME)
    at_f2f = poses(f2f)
    f2f_moved = np.linalg.norm(at_f2f[last][:3, 3] - at_f2f[first][:3, 3])
    print(f'over the stop: {moved * 1e3:.2f} mm, {turned:.4f} deg; error '
          f'{err[first + 10] * 1e3:.1f} -> {err[last] * 1e3:.1f} mm; keyframes made {len(keyframes)}; the frame-to-frame '
          f'chain moved {f2f_moved * 1e3:.2f} mm')
    assert moved < 0.005 and turned < 0.05
    assert err[last] <= 1.5 * err[first + 10]
    assert keyframes == []
    assert f2f_moved > moved


@pytest.fixture(scope='module')
def drive():
    scene, keyframed = run('drive_200m_slow', wanted={'odometry', 'relative_pose_info'})
    _, chained = run('drive_200m_slow', **FRAME_TO_FRAME)
    return scene, keyframed, chained


def test_a_200m_path_scores_better_than_the_frame_to_frame_chain(drive, tmp_path):
    """200 m at 5 cm a frame (a robot at 1.5 m/s seen at 30 Hz; 4,000 frames): evo on the
    odometry, RPE per 100 m lower than the frame-to-frame chain's on the same scene and
    noise model (the chain adds every frame's estimation noise, the keyframes one per
    keyframe), and the chained error below 1 % of the path (the final position error and the
    APE's RMSE)."""
    scene, keyframed, chained = drive
    truth = scene.write_truth(tmp_path / 'truth.txt')
    scores = {}
    for name, results in (('keyframes', keyframed), ('frame_to_frame', chained)):
        stamps, T = trajectory(results, scene)
        scores[name] = vo_eval.score(truth, (stamps, T))
        final = np.linalg.norm(T[-1][:3, 3] - scene.truth_camera_odom()[-1][:3, 3])
        scores[name + '_final_m'] = final
    path = scores['keyframes'].path_m
    kf, f2f = scores['keyframes'], scores['frame_to_frame']
    print(f'{path:.1f} m: keyframes APE {kf.ape_rmse_m:.3f} m, RPE {kf.rpe_percent:.3f} % '
          f'({kf.rpe_pairs} pairs), final {scores["keyframes_final_m"]:.3f} m; '
          f'frame-to-frame APE {f2f.ape_rmse_m:.3f} m, RPE {f2f.rpe_percent:.3f} %, final '
          f'{scores["frame_to_frame_final_m"]:.3f} m')
    assert path > 195 and kf.rpe_pairs > 100
    assert kf.rpe_rmse_m < f2f.rpe_rmse_m
    assert scores['keyframes_final_m'] < 0.01 * path and kf.ape_rmse_m < 0.01 * path
    # keyframes are made while moving, and far fewer than frames
    made = sum(r.messages['relative_pose_info'].new_keyframe for r in keyframed[1:])
    assert 100 < made < scene.frames / 5


def test_unmatchable_frames_hold_the_odometry_and_tracking_recovers_on_the_keyframe():
    """Frames 59-61 cannot be matched (a covered lens): they are LOST, the odometry stays
    where it was with an inflated covariance, and frame 62 is posed against the last
    keyframe from before the gap, in the same segment."""
    scene, results = run('covered_lens')
    states = [r.odometry_state for r in results]
    assert states[59:62] == ['LOST'] * 3
    assert states[62] == 'OK' and states.count('RESET') == 1          # only the first frame
    before = results[58].messages['odometry'].pose
    for k in (59, 60, 61):
        odo = results[k].messages['odometry'].pose
        assert [odo.pose.position.x, odo.pose.position.y, odo.pose.position.z] == \
            [before.pose.position.x, before.pose.position.y, before.pose.position.z]
        grown = np.diag(np.reshape(odo.covariance, (6, 6)) - np.reshape(before.covariance, (6, 6)))
        np.testing.assert_allclose(grown, LOST_VARIANCE)
        info = results[k].messages['relative_pose_info']
        assert info.tracking_state == 'LOST' and info.pose.covariance[0] == -1
    info = results[62].messages['relative_pose_info']
    assert info.tracking_state == 'OK' and info.segment == 0
    keyframe = [k for k in range(62) if results[k].messages.get('relative_pose_info') is not None
                and results[k].messages['relative_pose_info'].header.stamp == info.stamp_b]
    assert keyframe == [] or keyframe[0] < 59       # frame 0 has no relative_pose_info
    assert scene.stamp_s(58) >= info.stamp_b.sec + info.stamp_b.nanosec * 1e-9
    err = np.linalg.norm(poses(results)[62][:3, 3] - scene.truth_camera_odom()[62][:3, 3])
    assert err < 0.05, err


def test_body_frame_odometry_of_a_tilted_mount_is_the_robots_motion():
    """base_frame with the rig's mount (15 deg down, 0.7 m up, 1.5 deg of roll) as the
    base_to_camera parameter: ~/odometry is base_link in a z-up odom and equals the true
    body motion."""
    scene = vo_scenes.scene('stop_and_go')
    from romav2_ros.static_tf import FixedMount
    pipe = MatchingPipeline(vo_scenes.VoOracle(scene), PipelineConfig(
        mode='stereo_odometry', base_frame='base_link'), FixedMount(scene.mount_parameter()))
    results = [pipe.process(scene.inputs(k), {'odometry', 'tf'}) for k in range(80)]
    at, truth = poses(results), scene.truth_base_odom()
    odo = results[40].messages['odometry']
    assert odo.header.frame_id == 'odom' and odo.child_frame_id == 'base_link'
    assert results[40].transform.child_frame_id == 'base_link'
    errors = [np.linalg.norm(M[:3, 3] - truth[k][:3, 3]) for k, M in at.items()]
    heading = [angle_deg(M[:3, :3].T @ truth[k][:3, :3]) for k, M in at.items()]
    print(f'body position error max {max(errors) * 1e3:.2f} mm, heading {max(heading):.3f} deg')
    assert max(errors) < 0.02 and max(heading) < 0.2
    # z up: the body stays on the (gently rolling) ground, near odom's z = 0
    assert max(abs(M[2, 3] - truth[k][2, 3]) for k, M in at.items()) < 0.01
