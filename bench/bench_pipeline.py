"""The node's own time per set: everything the node does besides the model, in-process.

The pipeline the node and the replay run (``romav2_ros.pipeline.MatchingPipeline``: decode,
pair, the device products, poses, odometry, messages; no DDS) on a 640 x 480 rectified stereo
stream, with the model replaced by the TIMING STAND-IN (``bench/timing_standin.py``: the real
model's output sizes for a setting, here at 0 ms), so that what is left is the node's own
work. Per case, the median over ``--sets`` sets (after a warm-up) of the wall-clock and the
process CPU time per set, and of each stage's time (``PipelineResult.timings``).

Both sides of the comparison in one run, each in its own interpreter: this working tree, as
its node runs the host stage (one torch thread), and a git revision (default 47190d3, before
the device products and the pipelined stages), as its node ran (torch's default threads),
from ``git archive`` into a temporary folder.

    .venv/bin/python bench/bench_pipeline.py                      # base grid, 60 sets a case
    .venv/bin/python bench/bench_pipeline.py --rev none --sets 5  # this tree only (CI smoke)
    .venv/bin/python bench/bench_pipeline.py --rev HEAD --rev-torch-threads 1  # a change

Cases: ``relative_pose`` (stereo), ``depth_points2`` (stereo depth + points2),
``odometry`` (stereo_odometry: odometry + TF), ``all_but_pictures`` (every stereo output but
the ``*_viz`` ones), ``sequential_pose`` (sequential: relative_pose).

The stand-in's scene moves evenly, so the odometry's PnP starts from its motion model's
prediction after the first frames of a keyframe (a stereo pair's pose is always RANSAC's)
(``pose_seeded_by`` counts the odometry's starts); RANSAC, where a prediction misses, adds
what ``bench/bench_pose.py`` measures for its ``ours`` side over its ``predicted`` one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = common.ROOT
CASES = {
    'relative_pose': ('stereo', ['relative_pose']),
    'depth_points2': ('stereo', ['depth', 'points2']),
    'odometry': ('stereo_odometry', ['odometry', 'tf']),
    'all_but_pictures': ('stereo', ['warp', 'certainty', 'covariance', 'disparity', 'depth',
                                    'depth_stddev', 'points2', 'matches', 'relative_pose',
                                    'relative_pose_info']),
    'sequential_pose': ('sequential', ['relative_pose']),
}
DEFAULT_REV = '47190d3'


def inputs(k: int, hz: float = 30.0):
    """Frame ``k`` of a 640 x 480 stereo stream tagged for the stand-in."""
    import oracle_matchers as om
    from builtin_interfaces.msg import Time
    ns = int(round(k * 1e9 / hz))
    stamp = Time(sec=100 + ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    img = om.texture(0)
    left, right = om.tag(img, k % 256, 1), om.tag(img, k % 256, 2)
    return (om.image_msg(left, 'left', stamp), om.camera_info('left', stamp),
            om.image_msg(right, 'right', stamp), om.camera_info('right', stamp, tx=om.BASELINE))


def measure_side(setting: str, sets: int, warmup: int, threads: int) -> dict:
    """This interpreter's pipeline (whatever romav2_ros it imports) over every case."""
    import torch
    import timing_standin
    from romav2_core.config import RoMaV2Config
    from romav2_ros.pipeline import MatchingPipeline, PipelineConfig
    if threads:
        torch.set_num_threads(threads)
    cfg = RoMaV2Config.from_setting(setting)
    grid = (cfg.H_hr, cfg.W_hr) if cfg.has_hr else (cfg.H_lr, cfg.W_lr)
    out = {'torch_threads': torch.get_num_threads(), 'grid': list(grid)}
    msgs = [inputs(k) for k in range(warmup + sets)]
    for case, (mode, wanted) in CASES.items():
        pipe = MatchingPipeline(timing_standin.TimingStandIn(grid, model_ms=0.0),
                                PipelineConfig(mode=mode))
        walls, cpus, stages, seeded = [], [], {}, {}
        for k, m in enumerate(msgs):
            m = m if mode != 'sequential' else m[:2]
            t0, c0 = time.perf_counter(), time.process_time()
            res = pipe.process(m, set(wanted))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if k < warmup:
                continue
            walls.append(wall)
            cpus.append(cpu)
            for stage, seconds in res.timings.items():
                stages.setdefault(stage, []).append(float(seconds))
            if 'seeded_by' in res.odometry_quality:
                start = res.odometry_quality['seeded_by']
                seeded[start] = seeded.get(start, 0) + 1
        out[case] = {'wall_ms': 1e3 * statistics.median(walls),
                     'cpu_ms': 1e3 * statistics.median(cpus),
                     'stage_ms': {s: 1e3 * statistics.median(v) for s, v in stages.items()},
                     'outputs': sorted(res.messages), 'notes': res.notes}
        if seeded:        # the odometry's PnP: from RANSAC or the motion model's prediction
            out[case]['pose_seeded_by'] = seeded
    return out


def run_side(tree: Path, args, threads: int) -> dict:
    """:func:`measure_side` in a fresh interpreter importing the packages of ``tree``."""
    code = (f'import sys, json; sys.path[:0] = [{str(tree)!r}, {str(ROOT / "bench")!r}, '
            f'{str(ROOT / "test")!r}, {str(ROOT / "test" / "ros")!r}]; '
            f'import bench_pipeline as b; print(json.dumps(b.measure_side('
            f'{args.setting!r}, {args.sets}, {args.warmup}, {threads})))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=tree)
    if done.returncode:
        raise RuntimeError(f'side {tree} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def revision_tree(rev: str, into: Path) -> Path:
    """``git archive rev`` unpacked in ``into``, with this tree's generated messages (the
    revision's messages are a subset of today's fields, so its code runs with them)."""
    archive = subprocess.run(['git', 'archive', rev], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(['tar', '-x', '-C', str(into)], input=archive, check=True)
    shutil.copytree(ROOT / 'romav2_ros' / 'msg', into / 'romav2_ros' / 'msg',
                    dirs_exist_ok=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--setting', default='base', choices=['turbo', 'fast', 'base'],
                   help='the stand-in\'s output grid: the setting\'s (base: 640 x 640)')
    p.add_argument('--sets', type=int, default=60)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--rev', default=DEFAULT_REV, help='git revision to compare with, or none')
    p.add_argument('--rev-torch-threads', type=int, default=0,
                   help="the revision's torch threads (0: torch's default, as the nodes before "
                        "the pipelined stages ran; 1: as the host stage runs, to compare two "
                        "revisions of it)")
    args = p.parse_args()
    result = {'benchmark': 'pipeline_own_time',
              'command': ' '.join(['bench/bench_pipeline.py', *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting,
              'image_size_wh': [640, 480], 'model': 'timing stand-in at 0 ms',
              'sides': {'current': run_side(ROOT, args, threads=1)}}
    if args.rev != 'none':
        with tempfile.TemporaryDirectory() as tmp:
            result['sides'][args.rev] = run_side(revision_tree(args.rev, Path(tmp)), args,
                                                 threads=args.rev_torch_threads)
    lines = []
    for case in CASES:
        row = ', '.join(f'{name} {side[case]["cpu_ms"]:.1f} ms CPU / '
                        f'{side[case]["wall_ms"]:.1f} ms wall'
                        for name, side in result['sides'].items())
        lines.append(f'{case}: {row}')
    common.report(result, '\n'.join(lines))


if __name__ == '__main__':
    main()
