"""romav2-replay end to end: a bag written here -> replay -> the output bag read back."""
import subprocess
import sys

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

import replay_doubles as doubles
from romav2_ros import bag_io, messages, replay
from romav2_ros.pipeline import mode_outputs

NODE = '/romav2_node'
ENCODINGS = {'warp': '32FC2', 'certainty': '32FC1', 'covariance': '32FC3',
             'matches_viz': 'rgb8', 'warp_viz': 'rgb8', 'covariance_viz': 'rgb8'}


def read_bag(path):
    """topic -> [(log_ns, rosbags message, rclpy message)], decoded with a fresh typestore
    that knows only what the bag itself stores (so the bag is self-describing)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    out = {}
    with Reader(path) as reader:
        bag_io.register_bag_types(store, reader.connections)
        for conn, log_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append(
                (log_ns, store.deserialize_cdr(raw, conn.msgtype),
                 bag_io.deserialize(raw, conn.msgtype)))
    return out


def check_stereo_outputs(out_bag, stamps, outputs=mode_outputs('stereo')):
    got = read_bag(out_bag)
    assert {t for t in got if t.startswith(NODE)} == {f'{NODE}/{k}' for k in outputs}
    for key in outputs:
        records = got[f'{NODE}/{key}']
        assert [r[0] for r in records] == stamps, key        # one per pair, at its log time
        for (_, ros_msg, rcl_msg), stamp in zip(records, stamps):
            assert messages.stamp_ns(rcl_msg.header.stamp) == stamp
            assert messages.stamp_ns(ros_msg.header.stamp) == stamp
            expected_frame = 'right_optical' if key == 'relative_pose' else 'left_optical'
            assert rcl_msg.header.frame_id == expected_frame, key
            if key in ENCODINGS:
                assert rcl_msg.encoding == ENCODINGS[key] == ros_msg.encoding
                assert (rcl_msg.height, rcl_msg.width) == (48, 64) or key.endswith('_viz')
    if 'warp' in outputs:
        _, ros_msg, rcl_msg = got[f'{NODE}/warp'][0]
        warp = np.frombuffer(bytes(rcl_msg.data), np.float32).reshape(48, 64, 2)
        assert np.array_equal(warp.tobytes(), ros_msg.data.tobytes())
        # The oracle's warp: x - 2 px (away from the left edge, where it leaves B).
        np.testing.assert_allclose(warp[24, 32], [30.0, 24.0], atol=1e-3)
    return got


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_in_process_round_trip(tmp_path, storage, capsys):
    stamps = doubles.write_stereo_bag(tmp_path / 'in', storage, pairs=3, extra_left=1)
    args = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'out'), '--storage', storage,
                              '--include-inputs'])
    assert replay.replay(args, matcher=doubles.ShiftOracle()) == 0
    got = check_stereo_outputs(tmp_path / 'out', stamps)
    assert len(got['/stereo/left/image_rect']) == 4 and len(got['/stereo/right/image_rect']) == 3
    err = capsys.readouterr().err
    assert '3 processed of 3 synchronised input sets' in err
    assert 'unsynchronised left_image 1' in err
    assert 'mean latency per frame: decode' in err
    assert f'storage_identifier: {storage}' in (tmp_path / 'out' / 'metadata.yaml').read_text()


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_installed_script_round_trip(tmp_path, storage, replay_exe, script_env):
    stamps = doubles.write_stereo_bag(tmp_path / 'in', storage, pairs=2)
    proc = subprocess.run(
        [str(replay_exe), str(tmp_path / 'in'), str(tmp_path / 'out'), '--storage', storage,
         '-p', 'model_source:=replay_doubles:oracle', '--outputs', 'warp,certainty,disparity'],
        env=script_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    check_stereo_outputs(tmp_path / 'out', stamps, outputs=('warp', 'certainty', 'disparity'))
    assert 'done in' in proc.stderr


def test_sequential_mode(tmp_path, capsys):
    stamps = doubles.write_sequence_bag(tmp_path / 'in', frames=4)
    args = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'out'), '--mode',
                              'sequential', '--outputs', 'warp,matches,relative_pose_info'])
    assert replay.replay(args, matcher=doubles.ShiftOracle()) == 0
    got = read_bag(tmp_path / 'out')
    for key in ('warp', 'matches', 'relative_pose_info'):
        records = got[f'{NODE}/{key}']
        # A = the current frame; the first frame has no previous one.
        assert [messages.stamp_ns(r[2].header.stamp) for r in records] == stamps[1:]
    info = got[f'{NODE}/relative_pose_info']
    assert [messages.stamp_ns(r[2].stamp_b) for r in info] == stamps[:-1]
    assert 'first frame of a sequence' in capsys.readouterr().err


def test_limit_and_dropped_inputs(tmp_path, capsys):
    doubles.write_stereo_bag(tmp_path / 'in', pairs=5)
    args = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'out'), '--limit', '2',
                              '--outputs', 'warp'])
    assert replay.replay(args, matcher=doubles.ShiftOracle()) == 0
    assert len(read_bag(tmp_path / 'out')[f'{NODE}/warp']) == 2
    assert '2 processed of 2' in capsys.readouterr().err


def test_input_error_is_counted_not_fatal(tmp_path, capsys):
    """A pair the pipeline rejects (NaN in a camera_info) is dropped with its code."""
    doubles.write_stereo_bag(tmp_path / 'in', pairs=3, nan_info_pairs={1})
    args = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'out'), '--outputs', 'warp'])
    assert replay.replay(args, matcher=doubles.ShiftOracle()) == 0
    assert len(read_bag(tmp_path / 'out')[f'{NODE}/warp']) == 2
    assert 'dropped: nan_camera_info 1' in capsys.readouterr().err


def test_topics_are_found_or_named(tmp_path):
    doubles.write_stereo_bag(tmp_path / 'in', pairs=1)
    with bag_io.open_reader(tmp_path / 'in') as reader:
        roles = replay.select_topics(reader.connections, 'stereo', None)
        assert list(roles.values()) == list(doubles.STEREO_TOPICS)
        with pytest.raises(replay.ReplayError, match='--topics IMAGE INFO'):
            replay.select_topics(reader.connections, 'sequential', None)
        named = replay.select_topics(reader.connections, 'sequential',
                                     list(doubles.STEREO_TOPICS[:2]))
        assert named == {'image': doubles.STEREO_TOPICS[0], 'info': doubles.STEREO_TOPICS[1]}
        with pytest.raises(replay.ReplayError, match='expected sensor_msgs/msg/CameraInfo'):
            replay.select_topics(reader.connections, 'sequential',
                                 [doubles.STEREO_TOPICS[0], doubles.STEREO_TOPICS[2]])


def test_existing_output_is_refused(tmp_path, capsys):
    doubles.write_stereo_bag(tmp_path / 'in', pairs=1)
    (tmp_path / 'out').mkdir()
    assert replay.main([str(tmp_path / 'in'), str(tmp_path / 'out'),
                        '-p', 'model_source:=replay_doubles:oracle']) == 1
    assert 'exists already' in capsys.readouterr().err


def test_node_parameters_apply(tmp_path, capsys):
    """Stamps 4 ms apart: exact sync (the node's default) pairs nothing, approximate does."""
    doubles.write_stereo_bag(tmp_path / 'in', pairs=3, right_delay_ns=4_000_000)
    exact = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'exact'),
                               '--outputs', 'warp'])
    assert replay.replay(exact, matcher=doubles.ShiftOracle()) == 0
    assert '0 processed of 0' in capsys.readouterr().err
    approx = replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'approx'), '--outputs',
                                'warp,certainty', '-p', 'approximate_sync:=true',
                                '-p', 'sync_slop:=0.005', '-p', 'publish_certainty:=false'])
    assert replay.replay(approx, matcher=doubles.ShiftOracle()) == 0
    got = read_bag(tmp_path / 'approx')
    assert list(got) == [f'{NODE}/warp'] and len(got[f'{NODE}/warp']) == 3


@pytest.mark.parametrize('bad, reason', [
    (['-p', 'nonsense:=1'], 'node parameter name'),
    (['-p', 'certainty_threshold:=2.0'], 'out of range'),
    (['-p', 'approximate_sync:=maybe'], 'true or false'),
    (['--setting', 'huge'], 'must be one of'),
    (['--outputs', 'warp,colour'], 'unknown outputs'),
    (['--mode', 'sequential', '--topics', 'a', 'b', 'c'], 'IMAGE INFO'),
])
def test_bad_arguments_exit_2(tmp_path, bad, reason, capsys):
    with pytest.raises(SystemExit) as exc:
        replay.parse_args([str(tmp_path / 'in'), str(tmp_path / 'out'), *bad])
    assert exc.value.code == 2
    assert reason in capsys.readouterr().err


@pytest.mark.slow
def test_random_weights_model(tmp_path, capsys):
    """The real model (seeded random weights, turbo) through the same replay path."""
    stamps = doubles.write_stereo_bag(tmp_path / 'in', pairs=1)
    assert replay.main([str(tmp_path / 'in'), str(tmp_path / 'out'), '--random-weights', '0',
                        '--setting', 'turbo', '--device', 'cpu',
                        '--outputs', 'warp,certainty,covariance,matches']) == 0
    got = read_bag(tmp_path / 'out')
    for key in ('warp', 'certainty', 'covariance', 'matches'):
        assert [messages.stamp_ns(r[2].header.stamp) for r in got[f'{NODE}/{key}']] == stamps
    certainty = np.frombuffer(bytes(got[f'{NODE}/certainty'][0][2].data), np.float32)
    assert np.isfinite(certainty).all() and ((0 <= certainty) & (certainty <= 1)).all()
    assert '1 processed of 1' in capsys.readouterr().err


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))
