"""Fleet scaling: ``romav2-batch`` frames/s with 1, 2, ... model workers on one Ray instance.

The fleet is ``--bags`` copies of the bundled real stereo bag ``data/samples/oakd_stereo``
(12 OAK-D pairs each, 640x480; ``scripts/setup_env.sh`` builds it). For every worker count
in ``--workers`` (interleaved ``--repeats`` times: 1, 2, 1, 2, ...) the installed
``romav2-batch`` runs as a user runs it, into a fresh output folder, and its
``summary.json`` gives: frames (synchronised pairs), compute seconds (from the first model
ready to the last bag written; it includes the later actors' model builds), frames/s over
them, each worker's own seconds per frame, the whole command's seconds (Ray start and model
builds included) and every actor's model build + warm-up time.

Default model: seeded random weights (timing only, no accuracy meaning), ``turbo`` at a
64x64 coarse resolution, so one pair is cheap next to the per-pair I/O and post-processing at
640x480: a small setting where the fleet's own overhead shows. Ray starts on 127.0.0.1; run
it in a private network namespace (the script refuses otherwise unless ``--ray-address``):

    unshare --net bash -c 'ip link set lo up && .venv/bin/python bench/bench_fleet.py'
    .venv/bin/python bench/bench_fleet.py --gpus-per-worker 1 --workers 1 2 4 --bags 16 \\
        --size 640 640 --ray-address auto          # a GPU machine / cluster
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TEMPLATE = common.ROOT / 'data' / 'samples' / 'oakd_stereo'
BATCH = Path(sys.executable).parent / 'romav2-batch'


def make_fleet(folder: Path, bags: int) -> None:
    if not (TEMPLATE / 'metadata.yaml').is_file():
        sys.exit(f'{TEMPLATE} missing: run scripts/setup_env.sh (it builds the sample bags)')
    for i in range(bags):
        bag = folder / f'robot_{i:02d}'
        bag.mkdir(parents=True)
        # A bag's storage file carries its folder's name (rosbag2 layout).
        shutil.copy(TEMPLATE / 'oakd_stereo.mcap', bag / f'{bag.name}.mcap')
        (bag / 'metadata.yaml').write_text((TEMPLATE / 'metadata.yaml').read_text()
                                           .replace('oakd_stereo.mcap', f'{bag.name}.mcap'))


def run_batch(fleet: Path, out: Path, workers: int, args) -> dict:
    model = (['-p', f'model_source:={args.model_source}'] if args.model_source
             else ['--random-weights', '0'])
    command = [str(BATCH), str(fleet), '--out', str(out), *model, '--setting', args.setting,
               '-p', f'H_lr:={args.size[0]}', '-p', f'W_lr:={args.size[1]}',
               '--workers', str(workers), '--outputs', args.outputs]
    if args.gpus_per_worker is not None:
        command += ['--gpus-per-worker', str(args.gpus_per_worker)]
    if args.ray_address:
        command += ['--ray-address', args.ray_address]
    if args.node_ip_address:
        command += ['--node-ip-address', args.node_ip_address]
    if args.limit:
        command += ['--limit', str(args.limit)]
    load_before = os.getloadavg()
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f'romav2-batch exited with {proc.returncode}:\n{proc.stderr[-4000:]}')
    summary = json.loads((out / 'summary.json').read_text())
    worker_s = sum(bag['seconds'] for bag in summary['bags'])
    return {'workers': workers, 'frames': summary['totals']['frames'],
            # A worker's own seconds per frame: equal for 1 and 2 workers when the cores
            # are free; it grows when the workers compete for them.
            'worker_s_per_frame': round(worker_s / max(summary['totals']['frames'], 1), 4),
            'processed': summary['totals']['processed'], 'compute_s': summary['compute_s'],
            'frames_per_s': summary['frames_per_s'], 'command_s': round(wall, 3),
            'model_build_s': [m['model_build_s'] for m in summary['models']],
            'actors_used': len(summary['models']),
            'ray': {k: summary['ray'][k] for k in ('version', 'address', 'gpus_per_worker')},
            'load_average_1min_before_after': [round(load_before[0], 2),
                                               round(os.getloadavg()[0], 2)],
            'command': ' '.join(['romav2-batch', *command[1:]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts')
    p.add_argument('--repeats', type=int, default=1, help='interleaved runs per worker count')
    p.add_argument('--bags', type=int, default=4, help='copies of the 12-pair sample bag')
    p.add_argument('--limit', type=int, help='pairs per bag (romav2-replay --limit)')
    p.add_argument('--setting', default='turbo')
    p.add_argument('--size', type=int, nargs=2, default=[64, 64], metavar=('H', 'W'),
                   help='coarse model resolution H_lr W_lr (default 64 64)')
    p.add_argument('--outputs', default='warp,certainty,covariance,disparity,matches,'
                                        'relative_pose', help='romav2-batch --outputs')
    p.add_argument('--gpus-per-worker', type=float, help='romav2-batch --gpus-per-worker')
    p.add_argument('--ray-address', help='romav2-batch --ray-address (default: local Ray)')
    p.add_argument('--node-ip-address', help='romav2-batch --node-ip-address')
    p.add_argument('--model-source', help='a model_source instead of random weights')
    p.add_argument('--timeout', type=float, default=1800, help='seconds per romav2-batch run')
    p.add_argument('--note', default='', help='free text stored with the result')
    args = p.parse_args()
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if not args.ray_address and interfaces != ['lo']:
        sys.exit(f'a local Ray instance must not listen beyond loopback: run inside `unshare '
                 f'--net` (interfaces here: {interfaces}), or give --ray-address')
    runs = []
    with tempfile.TemporaryDirectory(prefix='bench_fleet_') as tmp:
        fleet = Path(tmp) / 'fleet'
        make_fleet(fleet, args.bags)
        for repeat in range(args.repeats):
            for workers in args.workers:
                out = Path(tmp) / f'out_{workers}_{repeat}'
                runs.append(run_batch(fleet, out, workers, args))
                shutil.rmtree(out)
    per_count = {}
    for workers in args.workers:
        mine = [r for r in runs if r['workers'] == workers]
        per_count[str(workers)] = {
            'frames_per_s_median': statistics.median(r['frames_per_s'] for r in mine),
            'model_build_s_median': statistics.median(b for r in mine for b in r['model_build_s']),
            'worker_s_per_frame_median': statistics.median(r['worker_s_per_frame'] for r in mine)}
    base = per_count[str(args.workers[0])]['frames_per_s_median']
    for workers, row in per_count.items():
        row['speedup_over_first'] = round(row['frames_per_s_median'] / base, 3)
    result = {'benchmark': 'fleet', 'command': ' '.join(['bench/bench_fleet.py', *sys.argv[1:]]),
              'machine': common.machine(),
              'fleet': f'{args.bags} copies of data/samples/oakd_stereo (12 pairs, 640x480)',
              'model': args.model_source or
              f'seeded random weights, {args.setting} at {args.size[0]}x{args.size[1]} '
              f'(timing only; no accuracy meaning)',
              'outputs': args.outputs, 'note': args.note, 'runs': runs, 'by_workers': per_count}
    summary = ', '.join(f'{w} worker(s) {r["frames_per_s_median"]:.2f} frames/s '
                        f'(x{r["speedup_over_first"]:.2f}, model build '
                        f'{r["model_build_s_median"]:.1f} s)' for w, r in per_count.items())
    common.report(result, f'fleet {args.bags} bags: {summary}')


if __name__ == '__main__':
    main()
