"""Soak: thousands of small frames through the offline path (bag -> romav2-replay -> bag),
in-process, with the fast fault_matchers.ShiftMatcher. Resident memory must stay flat and
every input pair must give exactly one output per topic, except the drops the replay reports.
"""
import os
import re
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time

import fault_matchers as fm
from romav2_ros import bag_io, replay

PAIRS = int(os.environ.get('ROMAV2_SOAK_PAIRS', 2000))
H, W = 48, 64
BAD_EVERY = 100                    # every 100th pair has a NaN camera_info: a reported drop
RSS_GROWTH_LIMIT_MIB = 25.0
OUTPUTS = 'warp,certainty,covariance,disparity,matches,relative_pose,relative_pose_info'
TOPICS = ('/stereo/left/image_rect', '/stereo/left/camera_info',
          '/stereo/right/image_rect', '/stereo/right/camera_info')


def write_bag(path, pairs):
    textures = [fm.texture(s, H, W) for s in range(8)]
    from std_msgs.msg import Header

    from romav2_ros.image_conversion import numpy_to_imgmsg
    with bag_io.BagWriter(path, 'mcap') as writer:
        for k in range(pairs):
            ns = 1_700_000_000 * 10 ** 9 + k * 33_000_000
            stamp = Time(sec=ns // 10 ** 9, nanosec=ns % 10 ** 9)
            li = fm.camera_info('left_optical', stamp, h=H, w=W)
            ri = fm.camera_info('right_optical', stamp, tx=0.1, h=H, w=W)
            if k % BAD_EVERY == BAD_EVERY - 1:
                ri.p = [float('nan')] * 12
            msgs = (numpy_to_imgmsg(textures[k % 8], 'rgb8', Header(stamp=stamp,
                                                                     frame_id='left_optical')),
                    li,
                    numpy_to_imgmsg(textures[(k + 1) % 8], 'rgb8',
                                    Header(stamp=stamp, frame_id='right_optical')),
                    ri)
            for topic, msg in zip(TOPICS, msgs):
                writer.write(topic, msg, ns)


@pytest.mark.slow
def test_soak_replay_memory_flat_and_nothing_lost(tmp_path, capsys):
    in_bag, out_bag = tmp_path / 'in', tmp_path / 'out'
    write_bag(in_bag, PAIRS)
    matcher = fm.ShiftMatcher(output_hw=(12, 16))
    matcher.sample_rss_every = 100
    args = replay.parse_args([str(in_bag), str(out_bag), '--mode', 'stereo',
                              '--outputs', OUTPUTS, '-p', 'num_samples:=100'])
    started = time.monotonic()
    assert replay.replay(args, matcher=matcher) == 0
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    bad = PAIRS // BAD_EVERY
    assert f'{PAIRS - bad} processed of {PAIRS} synchronised input sets' in err, err
    assert re.search(rf'dropped: nan_camera_info {bad}\b', err), err

    with bag_io.open_reader(out_bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    want = {f'/romav2_node/{k}' for k in OUTPUTS.split(',')}
    assert set(counts) <= want
    for topic in want - {'/romav2_node/relative_pose', '/romav2_node/relative_pose_info'}:
        assert counts[topic] == PAIRS - bad, (topic, counts)   # inputs minus reported drops
    poses = counts.get('/romav2_node/relative_pose', 0)
    pose_failed = sum(int(n) for n in re.findall(r'pose_failed: [^;]*\(x(\d+)\)', err))
    assert poses + pose_failed == PAIRS - bad, (poses, pose_failed, err)

    rss = np.array(matcher.rss_samples) / 2 ** 20
    baseline = rss[2]                      # after 300 pairs: allocator and caches warmed up
    growth = rss[3:].max() - baseline
    print(f'\nsoak: {PAIRS} pairs of {W}x{H} in {elapsed:.1f} s '
          f'({PAIRS / elapsed:.0f} pairs/s); RSS {baseline:.0f} MiB after 300 pairs, '
          f'max growth {growth:+.1f} MiB over the remaining {PAIRS - 300}; drops {bad}')
    assert growth < RSS_GROWTH_LIMIT_MIB, rss.round(1).tolist()
