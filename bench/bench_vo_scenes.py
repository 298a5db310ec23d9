"""Per-frame cost of the synthetic VO sequences (test/vo_scenes.py) in the stereo_odometry
pipeline, for the default 320 x 240 images with a 60 x 80 output grid against 640 x 480 with
120 x 160 (the grid of oracle_matchers' scenes), measured in one run on the same frames.

For each variant: building a frame's four messages (``VoScene.inputs``), the oracle's two
pairs (left -> right and left_t -> left_t-1, encoded and matched as the pipeline does), and a
whole frame through ``MatchingPipeline.process`` with the outputs an odometry test wants
(wall and CPU time of the whole loop over the frames, inputs included: the pipeline may
finish a frame's products on a thread); plus the APE of the resulting odometry (evo,
test/vo_eval.py) as a sanity check that both variants track.

    .venv/bin/python bench/bench_vo_scenes.py --frames 60

Prints one JSON object (machine, command, per variant: ms a frame).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts test/ on sys.path)
from vo_eval import pose_matrix  # noqa: E402

import vo_eval  # noqa: E402
import vo_scenes as vs  # noqa: E402
from matcher_doubles import DoubleFeatures  # noqa: E402
from romav2_ros.pipeline import MatchingPipeline, PipelineConfig  # noqa: E402

WANTED = {'odometry', 'relative_pose', 'depth', 'matches', 'tf'}
VARIANTS = {'320x240_grid60x80': (vs.StereoCamera(320, 240, 250.0, 0.1), (60, 80)),
            '640x480_grid120x160': (vs.StereoCamera(640, 480, 500.0, 0.1), (120, 160))}


def run(camera, grid, frames: int) -> dict:
    scene = vs.VoScene('drive_200m', vs.scene('drive_200m').body[:frames], camera=camera)
    matcher = vs.VoOracle(scene, output_hw=grid, seed=0)
    pipe = MatchingPipeline(matcher, PipelineConfig(mode='stereo_odometry'))
    t_inputs, t_oracle, stamps, poses = [], [], [], []
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(frames):
        t0 = time.perf_counter()
        msgs = scene.inputs(k)
        t_inputs.append(time.perf_counter() - t0)
        res = pipe.process(msgs, WANTED)
        if 'odometry' in res.messages:
            stamps.append(scene.stamp_s(k))
            poses.append(pose_matrix(res.messages['odometry'].pose.pose))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    import torch
    for k in range(1, frames):
        left, right = scene.images(k)
        prev = scene.images(k - 1)[0]
        batch = torch.from_numpy(np.stack([left, right, prev])).permute(0, 3, 1, 2)
        t0 = time.perf_counter()
        f = matcher.encode(batch)
        matcher.match_features(DoubleFeatures.cat([f[:1], f[:1]]), f[1:])
        t_oracle.append(time.perf_counter() - t0)
    truth = scene.truth_camera_odom()
    score = vo_eval.score((scene.stamp_s(np.arange(frames)), truth),
                          (np.array(stamps), np.array(poses)), rpe_delta_m=1.0)

    def ms(xs):
        return {'median': 1e3 * statistics.median(xs), 'mean': 1e3 * statistics.fmean(xs)}
    # the pipeline may finish a frame's products on a thread: whole-loop wall and CPU time
    return {'inputs_ms': ms(t_inputs), 'oracle_two_pairs_ms': ms(t_oracle),
            'frame_wall_ms_mean': 1e3 * wall / frames, 'frame_cpu_ms_mean': 1e3 * cpu / frames,
            'odometry_frames': len(stamps), 'ape_rmse_m': score.ape_rmse_m,
            'path_m': score.path_m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=60)
    args = parser.parse_args()
    out = {'machine': common.machine(), 'command': ' '.join(sys.argv),
           'frames': args.frames,
           'variants': {name: run(camera, grid, args.frames)
                        for name, (camera, grid) in VARIANTS.items()}}
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
