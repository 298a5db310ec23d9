"""``romav2-replay --batch N``: frames per second of the offline replay for N = 1, 4, 8.

One bag of ``--frames`` 640 x 480 sets made from the Middlebury Motorcycle pair (scikit-image;
shifted 2 px a frame; stereo: left/right per stamp, sequential: the left images as a stream) is
replayed with the node's pipeline, seeded random weights (timing only) and every output but
the pictures, once per ``--batch`` value, each in its own process, in one run. Each run is
timed from the replay's own summary (model build excluded). The outputs of every batch size
are compared with those of ``--batch 1`` (``max_abs_diff_warp_px``: float rounding of the
batched model; the contract is equality up to it).

    .venv/bin/python bench/bench_replay.py --mode stereo --setting turbo --frames 16
    .venv/bin/python bench/bench_replay.py --smoke       # CI: 64 x 64 model, 4 frames, N 1 2

Prints one JSON object (machine, command, per batch size: frames/s and seconds).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TOPICS = {'stereo': ('/stereo/left/image_rect', '/stereo/left/camera_info',
                     '/stereo/right/image_rect', '/stereo/right/camera_info'),
          'sequential': ('/camera/image_raw', '/camera/camera_info')}


def write_bag(path: Path, mode: str, frames: int, width: int, height: int) -> None:
    import cv2
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, Image
    from skimage import data

    from romav2_ros import bag_io
    from romav2_ros.messages import stamp_ns
    pair = data.stereo_motorcycle()[:2]
    f = 0.8 * width
    with bag_io.BagWriter(path) as writer:
        for k in range(frames):
            stamp = Time(sec=100 + k // 10, nanosec=(k % 10) * 100_000_000)
            sides = pair if mode == 'stereo' else pair[:1]
            msgs = []
            for side, img in enumerate(sides):
                img = np.ascontiguousarray(cv2.resize(np.roll(img, 2 * k, axis=1),
                                                      (width, height)))
                msg = Image(height=height, width=width, encoding='rgb8', step=3 * width)
                msg.data = img.tobytes()
                msg.header.stamp, msg.header.frame_id = stamp, ('left', 'right')[side]
                tx = -f * 0.1 if side else 0.0
                info = CameraInfo(width=width, height=height, distortion_model='plumb_bob',
                                  d=[0.0] * 5, k=[f, 0.0, width / 2, 0.0, f, height / 2, 0.0,
                                                  0.0, 1.0],
                                  r=np.eye(3).ravel().tolist(),
                                  p=[f, 0.0, width / 2, tx, 0.0, f, height / 2, 0.0, 0.0, 0.0,
                                     1.0, 0.0])
                info.header = msg.header
                msgs += [msg, info]
            for topic, msg in zip(TOPICS[mode], msgs):
                writer.write(topic, msg, stamp_ns(stamp))


def run_replay(bag: Path, out: Path, args, batch: int) -> dict:
    """One ``romav2-replay`` process; frames/s from its summary (model build excluded)."""
    cmd = [sys.executable, '-m', 'romav2_ros.replay', str(bag), str(out), '--mode', args.mode,
           '--setting', args.setting, '--random-weights', '0', '--device', 'cpu',
           '--batch', str(batch), '-p', f'precision:={args.precision}']
    cmd += [item for p in args.param for item in ('-p', p)]
    outputs = 'warp,certainty,covariance,matches,relative_pose' + \
        (',disparity,depth,depth_stddev,points2' if args.mode == 'stereo' else '')
    cmd += ['--outputs', outputs]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, timeout=7200)
    if proc.returncode:
        raise SystemExit(f'replay failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
    sys.stderr.write(proc.stderr)
    done = re.search(r'done in ([\d.]+) s: (\d+) processed', proc.stderr)
    # the replay's per-frame stage means (ms) sum to its processing time per frame
    stages = re.search(r'mean latency per frame: .*, total ([\d.]+) ms', proc.stderr)
    frames = int(done.group(2))
    seconds = frames * float(stages.group(1)) / 1e3
    return {'batch': batch, 'frames': frames, 'seconds': round(seconds, 3),
            'frames_per_s': round(frames / seconds, 4), 'wall_s_with_build': float(done.group(1))}


def warp_difference(a: Path, b: Path) -> float:
    from romav2_ros import bag_io
    from romav2_ros.image_conversion import imgmsg_to_numpy

    def warps(path):
        with bag_io.open_reader(path) as reader:
            return [imgmsg_to_numpy(bag_io.deserialize(raw, c.msgtype)) for c, _, raw in
                    bag_io.read_messages(reader, reader.connections)
                    if c.topic.endswith('/warp')]
    wa, wb = warps(a), warps(b)
    assert len(wa) == len(wb), (len(wa), len(wb))
    return max(float(np.nanmax(np.abs(x - y))) if np.isfinite(x - y).any() else 0.0
               for x, y in zip(wa, wb))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mode', choices=tuple(TOPICS), default='stereo')
    parser.add_argument('--setting', default='turbo')
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 4, 8])
    parser.add_argument('--image-size', type=int, nargs=2, default=[640, 480],
                        metavar=('W', 'H'))
    parser.add_argument('--precision', default='auto')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE')
    parser.add_argument('--smoke', action='store_true',
                        help='CI: 64 x 64 model, 96 x 64 images, 4 frames, batches 1 and 2')
    args = parser.parse_args(argv)
    if args.smoke:
        args.frames, args.batches, args.image_size = 4, [1, 2], [96, 64]
        args.param += ['H_lr:=64', 'W_lr:=64', 'num_samples:=50', 'warmup:=false']
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'in'
        write_bag(bag, args.mode, args.frames, *args.image_size)
        runs = [run_replay(bag, Path(tmp) / f'out{b}', args, b) for b in args.batches]
        for r in runs[1:]:
            r['max_abs_diff_warp_px'] = warp_difference(Path(tmp) / f'out{args.batches[0]}',
                                                        Path(tmp) / f'out{r["batch"]}')
    report = {'benchmark': 'replay_batch', 'machine': common.machine(),
              'command': 'bench/bench_replay.py ' + ' '.join(argv or sys.argv[1:]),
              'mode': args.mode, 'setting': args.setting, 'image_size': args.image_size,
              'precision': args.precision, 'runs': runs,
              'speedup_vs_batch_1': {r['batch']: round(r['frames_per_s'] /
                                                       runs[0]['frames_per_s'], 3)
                                     for r in runs}}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
