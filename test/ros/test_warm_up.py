"""The node's warm-up (romav2_ros.matchers.warm_up): the live calls' shapes, as many times as
the compile mode needs before the first live frame."""
from dataclasses import dataclass

import pytest

import oracle_matchers as om
from matcher_doubles import DoubleFeatures, ImageRecord
from romav2_ros import matchers
from romav2_ros.pipeline import MatchingPipeline, PipelineConfig


@dataclass(frozen=True)
class _Cfg:
    compile: str


class _CountingMatcher:
    """Records the batch sizes of every encode and match_features call."""

    output_hw = (24, 40)

    def __init__(self, compile_mode):
        self.cfg = _Cfg(compile_mode)
        self.calls = []

    def encode(self, images):
        assert images.shape[1:] == (3, *self.output_hw)
        self.calls.append(('encode', images.shape[0]))
        return DoubleFeatures([ImageRecord(self.output_hw, (0, 0, 0))] * images.shape[0])

    def match_features(self, f_A, f_B):
        self.calls.append(('match', len(f_A), len(f_B)))


@pytest.mark.parametrize('compile_mode, runs', [('off', 1), ('default', 1),
                                                ('reduce-overhead', 3)])
@pytest.mark.parametrize('mode, calls', [
    ('stereo', [('encode', 2), ('match', 1, 1)]),
    ('sequential', [('encode', 1), ('match', 1, 1)]),
    ('stereo_odometry', [('encode', 2), ('match', 2, 2), ('match', 1, 1)]),
])
def test_warm_up_runs_the_live_shapes_as_often_as_the_compile_mode_needs(compile_mode, runs,
                                                                         mode, calls):
    """CUDA graph trees (reduce-overhead) warm up, record, then replay: three runs; one
    otherwise. Each run is the node's own batch composition for the mode."""
    matcher = _CountingMatcher(compile_mode)
    matchers.warm_up(matcher, 'cpu', mode)
    assert matcher.calls == calls * runs


class _RecordingOracle(om.TrajectoryOracle):
    """The trajectory oracle, recording the batch sizes of its calls as _CountingMatcher."""

    def __init__(self, scene):
        super().__init__(scene)
        self.calls = []

    def encode(self, images):
        self.calls.append(('encode', images.shape[0]))
        return super().encode(images)

    def match_features(self, fa, fb):
        self.calls.append(('match', len(fa), len(fb)))
        return super().match_features(fa, fb)


@pytest.mark.parametrize('mode', ['stereo', 'sequential', 'stereo_odometry'])
def test_the_warm_up_covers_every_call_shape_of_the_live_pipeline(mode):
    """Under torch.compile with static shapes a call shape the warm-up missed compiles on a
    live frame: the shapes of a live run -- with a segment's first frame and a stamp jump
    that starts another -- are all among the warm-up's."""
    scene = om.StereoTrajectory(frames=6)
    live = _RecordingOracle(scene)
    pipe = MatchingPipeline(live, PipelineConfig(mode=mode))
    for k in range(scene.frames):
        msgs = scene.inputs(k, t0_sec=200 if k < 3 else 300)      # a jump after frame 2
        pipe.process(msgs if mode != 'sequential' else msgs[:2], {'warp', 'matches'})
    warm = _CountingMatcher('off')
    matchers.warm_up(warm, 'cpu', mode)
    assert set(live.calls) <= set(warm.calls), set(live.calls) - set(warm.calls)
