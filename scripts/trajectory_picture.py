#!/usr/bin/env python3
"""docs/trajectory.png: stereo_odometry on the synthetic 24-frame stereo sequence of the tests
(test/ros/oracle_matchers.StereoTrajectory) with the oracle matcher at 0.2 px of match noise,
through ``romav2-replay --mode stereo_odometry --trajectory`` (the node's own pipeline),
against the ground truth. An oracle, not the model: it shows the odometry geometry, not RoMa's
accuracy (no weights here).

Usage: ``.venv/bin/python scripts/trajectory_picture.py [--out docs/trajectory.png]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path += [str(ROOT), str(ROOT / 'test'), str(ROOT / 'test' / 'ros')]  # after site-packages

import oracle_matchers as om  # noqa: E402
from romav2_core import trajectory  # noqa: E402
from romav2_ros import bag_io, replay  # noqa: E402
from romav2_ros.messages import stamp_ns  # noqa: E402

TOPICS = ('/stereo/left/image_rect', '/stereo/left/camera_info', '/stereo/right/image_rect',
          '/stereo/right/camera_info')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=ROOT / 'docs' / 'trajectory.png')
    args = parser.parse_args(argv)
    scene = om.StereoTrajectory()
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'sequence'
        with bag_io.BagWriter(bag) as writer:
            for k in range(scene.frames):
                for topic, msg in zip(TOPICS, scene.inputs(k)):
                    writer.write(topic, msg, stamp_ns(msg.header.stamp))
        tum = Path(tmp) / 'odometry.txt'
        run = replay.parse_args([str(bag), str(Path(tmp) / 'out'), '--mode', 'stereo_odometry',
                                 '--outputs', 'odometry', '--trajectory', str(tum)])
        assert replay.replay(run, matcher=om.TrajectoryOracle(scene, noise_px=0.2)) == 0
        estimate = trajectory.read_tum(tum)[:, 1:4]
    truth = np.array([scene.in_odom(k)[1] for k in range(1, scene.frames)])
    ate = float(np.sqrt(np.mean(np.sum((estimate - truth) ** 2, axis=1))))
    trajectory.plot_top_view(args.out, {'ground truth': truth,
                                        f'stereo_odometry (ATE {ate * 1e3:.1f} mm)': estimate})
    print(f'{args.out}: {len(truth)} poses, ATE (RMS) {ate * 1e3:.2f} mm over '
          f'{np.sum(np.linalg.norm(np.diff(truth, axis=0), axis=1)):.2f} m')
    return 0


if __name__ == '__main__':
    sys.exit(main())
