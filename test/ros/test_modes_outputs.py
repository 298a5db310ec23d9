"""Every mode with every output it accepts -- each alone and all together, the defaults --
through a segment's first frame, frames that cannot be matched (a covered lens: no pose) and
the recovery after them: nothing raises, only wanted outputs come out, each complete, and each
comes out wherever its inputs exist (the first frame of a stereo_odometry segment has no
motion pair; a frame without matches has no pose).
"""
import pytest

import vo_scenes
from romav2_ros.pipeline import MODES, TF, MatchingPipeline, PipelineConfig, mode_outputs

SCENE = 'covered_lens'                 # frames 59-61 covered
FRAMES = range(56, 66)
COVERED = {59, 60, 61}
POSE = {'relative_pose'}
MOTION = {'warp', 'certainty', 'covariance', 'matches', 'relative_pose', 'relative_pose_info',
          'odometry', 'matches_viz', 'warp_viz', 'covariance_viz'}


def cases():
    for mode in MODES:
        every = set(mode_outputs(mode)) | ({TF} if mode == 'stereo_odometry' else set())
        yield mode, 'all', every
        for key in mode_outputs(mode):
            yield mode, key, {key}


def complete(msg) -> bool:
    """A message whose payload is as long as its header says (images, clouds)."""
    image = getattr(msg, 'image', msg)          # DisparityImage carries an Image
    if hasattr(image, 'step') and hasattr(image, 'data'):
        return len(image.data) == image.step * image.height
    if hasattr(msg, 'row_step'):
        return len(msg.data) == msg.row_step * msg.height
    return True


def expected(mode: str, k: int, wanted: set) -> set:
    """The outputs a frame must have (wanted and possible)."""
    first = k == FRAMES[0]
    if mode == 'stereo':
        return wanted - (POSE | {'relative_pose_info'} if k in COVERED else set())
    if mode == 'sequential':
        if first:
            return set()
        blind = k in COVERED or k - 1 in COVERED        # A or B covered: no pose
        return wanted - (POSE | {'relative_pose_info'} if blind else set())
    # stereo_odometry: the stereo outputs always; the motion ones once a keyframe exists;
    # a covered frame is LOST: its pose is absent, its held odometry and LOST info are not
    if first:
        return wanted - MOTION - {TF}
    out = set(wanted)
    if k in COVERED:
        out -= POSE | {TF, 'matches', 'matches_viz'}
    return out - {TF}                              # the TF travels as result.transform


@pytest.mark.parametrize('mode, label, wanted', list(cases()),
                         ids=[f'{m}-{label}' for m, label, _ in cases()])
def test_every_mode_and_output_runs_through_first_and_failing_frames(mode, label, wanted):
    scene = vo_scenes.scene(SCENE)
    pipe = MatchingPipeline(vo_scenes.VoOracle(scene, noise=False), PipelineConfig(mode=mode))
    for k in FRAMES:
        msgs = scene.inputs(k)
        res = pipe.process(msgs if mode != 'sequential' else msgs[:2], wanted)
        got = set(res.messages)
        assert got <= wanted, (k, got - wanted)
        assert got == expected(mode, k, wanted), (k, sorted(got), res.notes)
        assert all(complete(m) for m in res.messages.values()), k
        if TF in wanted and k not in COVERED and k != FRAMES[0]:
            assert res.transform is not None, k
