"""What each RoMa v2 preset costs as the node runs it: seconds and peak memory per pair.

For each preset (``--settings``, default all five) one fresh subprocess builds our model with
seeded random weights exactly as the node configures it (the preset's coarse resolution and
high-resolution pass, **one direction**: the node never computes B -> A, whatever the preset
says) and times ``model.match`` on one camera-sized uint8 pair (``--image-size``, default
640 x 480; the HR pass upsamples to its own size whatever the image). The README's preset table
is printed from this JSON by ``bench/results_table.py``.

    .venv/bin/python bench/bench_presets.py                        # all presets, this machine
    .venv/bin/python bench/bench_presets.py --device cuda          # on a GPU
    .venv/bin/python bench/bench_presets.py --smoke                # CI: turbo at 64 px
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from romav2_core.config import SETTINGS, resolve_precision  # noqa: E402


def measure(args) -> dict:
    overrides = common.precision_overrides(args.precision, args.device)
    if args.smoke_size:
        overrides.update(H_lr=args.smoke_size, W_lr=args.smoke_size, H_hr=None, W_hr=None)
    model = common.build('ours', args.side_setting, args.device, **overrides)
    model.bidirectional = False
    W, H = args.image_size
    g = torch.Generator().manual_seed(1)
    img_A, img_B = (torch.randint(0, 256, (1, 3, H, W), generator=g, dtype=torch.uint8)
                    .to(args.device) for _ in range(2))
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    times = common.timed(lambda: model.match(img_A, img_B), args.device, args.repeats,
                         warmup=args.warmup)
    return {'setting': args.side_setting, 'H_lr': model.H_lr, 'W_lr': model.W_lr,
            'H_hr': model.H_hr, 'W_hr': model.W_hr, 'seconds_per_pair': common.median(times),
            'all_seconds': times, 'pairs_per_second': 1.0 / common.median(times),
            'peak_memory_mb': common.peak_memory_mb(args.device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--image-size', type=int, nargs=2, default=[640, 480], metavar=('W', 'H'))
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--precision', default='auto', choices=['official', 'auto', 'fp32', 'bf16'],
                   help="precision policy (default auto: the node's default)")
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--smoke', action='store_true',
                   help='CI: turbo only, a 64 px coarse grid, no HR pass, 1 repeat')
    p.add_argument('--side-setting', help=argparse.SUPPRESS)
    p.add_argument('--smoke-size', type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side_setting:
        print(json.dumps(measure(args)))
        return
    if args.smoke:
        args.settings, args.repeats, args.warmup = ['turbo'], 1, 0
    side = ['--device', args.device, '--precision', args.precision, '--repeats',
            str(args.repeats), '--warmup', str(args.warmup), '--image-size',
            *map(str, args.image_size)] + (['--smoke-size', '64'] if args.smoke else [])
    rows = [common.run_side(Path(__file__), [*side, '--side-setting', s])
            for s in args.settings]
    result = {'benchmark': 'presets',
              'command': ' '.join(['bench/bench_presets.py', *sys.argv[1:]]),
              'machine': common.machine(), 'device': args.device,
              'precision': args.precision,
              'precision_resolved': args.precision if args.precision == 'official'
              else resolve_precision(args.precision, args.device),
              'image_size': args.image_size, 'bidirectional': False, 'repeats': args.repeats,
              'warmup': args.warmup,
              'weights': 'seeded random (timing only; no accuracy meaning)', 'rows': rows}
    common.report(result, f'presets on {args.device}: ' + ', '.join(
        f'{r["setting"]} {r["seconds_per_pair"]:.2f} s {r["peak_memory_mb"] / 1024:.1f} GB'
        for r in rows))


if __name__ == '__main__':
    main()
