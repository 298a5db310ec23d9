"""``romav2-replay --batch N``: the bag written with N pairs per model call is the bag written
one pair at a time, message for message and bit for bit, in both modes, with a bad pair and an
unpaired image in the stream and a last batch shorter than N; the model really saw batches
(stereo_odometry: test/ros/test_stereo_odometry.py)."""
import pytest

import replay_doubles as doubles
from bag_compare import assert_same_bag
from romav2_ros import replay


@pytest.mark.parametrize('mode', ['stereo', 'sequential'])
def test_batched_replay_writes_the_one_pair_at_a_time_bag(tmp_path, mode):
    if mode == 'stereo':
        # pair 3 has a NaN focal length (dropped, counted); one left image has no partner
        doubles.write_stereo_bag(tmp_path / 'in', pairs=8, extra_left=1,
                                 nan_info_pairs=frozenset({3}))
    else:
        doubles.write_sequence_bag(tmp_path / 'in', frames=9)
    calls = {}
    for batch in (1, 3):
        matcher = doubles.ShiftOracle()
        args = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / f'out{batch}'),
                                  '--mode', mode, '--batch', str(batch)])
        assert replay.replay(args, matcher=matcher) == 0
        calls[batch] = matcher.match_calls
    assert assert_same_bag(tmp_path / 'out3', tmp_path / 'out1') > 0
    processed = 7 if mode == 'stereo' else 8          # pairs through the model
    assert calls[1] == processed and calls[3] < processed
