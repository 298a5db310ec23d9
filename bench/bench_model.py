"""Forward throughput and peak memory: our RoMaV2 vs the official romav2 2.0.1.

Same seeded random weights, same setting and resolution, same device, in one run: each side
in its own subprocess (so peak memory is its own), both built and warmed up, then their calls
interleaved one by one (``--repeats`` rounds, the order alternating), so a shared machine's
changing load hits both sides alike (``--sequential``: one side after the other, one model in
memory at a time). Prints JSON with both sides and the ratios (ours / official); the headline
is the throughput ratio.

    .venv/bin/python bench/bench_model.py --setting base --batch 1
    .venv/bin/python bench/bench_model.py --setting turbo --batch 8 --bidirectional --device cuda
    .venv/bin/python bench/bench_model.py --smoke      # CI: turbo at 64x96, 1 repeat

``--official-kernel``: the official model's local correlation as installed (its fused kernel,
PyPI ``fused-local-corr``, when ``import local_corr`` works, else its PyTorch fallback),
``native`` (the fallback forced), or ``both`` (two official rows in one run).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def official_local_corr(kernel: str) -> str:
    """Select the official model's local correlation in this process; returns which one runs
    ('fused' or 'native (why)')."""
    from official_oracle import import_official
    import_official()
    import romav2.local_correlation as official_lc
    if kernel == 'native':
        official_lc.local_corr = None
        return 'native (forced)'
    if official_lc.local_corr is None:
        return 'native (fused-local-corr not importable)'
    return 'fused'


def measure(args) -> Optional[dict]:
    """One side: build, warm up, then time (``--serve``: one call per request of the
    interleaving controller, see common.run_interleaved). Returns the side's row."""
    torch.manual_seed(0)
    kernel = official_local_corr(args.official_kernel) if args.side == 'official' else None
    model, precision_context = common.build_side(args.side, args.setting, args.device,
                                                 args.precision, args.size)
    model.bidirectional = args.bidirectional
    H, W = model.H_lr, model.W_lr
    g = torch.Generator().manual_seed(1)
    img_A = torch.rand(args.batch, 3, H, W, generator=g).to(args.device)
    img_B = torch.rand(args.batch, 3, H, W, generator=g).to(args.device)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()

    def row(times: list[float]) -> dict:
        out = {'side': args.side, 'seconds_per_batch': common.median(times),
               'all_seconds': times, 'pairs_per_second': args.batch / common.median(times),
               'peak_memory_mb': common.peak_memory_mb(args.device), 'H': H, 'W': W}
        if kernel is not None:
            out['local_corr'] = kernel
        return out

    with precision_context():
        if args.serve:
            common.timed(lambda: model(img_A, img_B), args.device, 0, warmup=args.warmup)
            common.serve(lambda: model(img_A, img_B), args.device, row)
            return None
        return row(common.timed(lambda: model(img_A, img_B), args.device, args.repeats,
                                warmup=args.warmup))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_case_arguments(p)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1, help='untimed calls before timing')
    p.add_argument('--precision', default='official', choices=['official', 'auto', 'fp32'],
                   help='"official": both sides under the official bf16 policy; "fp32": both '
                        'sides all-fp32 (the official with its amp flags off and autocast '
                        'disabled); "auto": ours under the node\'s default (fp32 where bf16 is '
                        'emulated) against the official as shipped')
    p.add_argument('--official-kernel', default='installed',
                   choices=['installed', 'native', 'both'],
                   help="the official side's local correlation (see above)")
    p.add_argument('--smoke', action='store_true', help='tiny case for CI (64x96, 1 repeat)')
    p.add_argument('--sequential', action='store_true',
                   help='run the sides one after the other instead of interleaving their calls '
                        '(only one model in memory at a time)')
    p.add_argument('--side', choices=['ours', 'official'], help=argparse.SUPPRESS)
    p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.setting, args.size, args.repeats = 'turbo', [64, 96], 1
    if args.side:
        result = measure(args)
        if result is not None:
            print(json.dumps(result))
        return

    forwarded = [a for a in sys.argv[1:] if a != '--smoke']
    if args.smoke:
        forwarded += ['--setting', 'turbo', '--size', '64', '96', '--repeats', '1']
    kernels = {'installed': ['installed'], 'native': ['native'],
               'both': ['installed', 'native']}[args.official_kernel]
    runs = [('official' if i == 0 else 'official_native', 'official', k)
            for i, k in enumerate(kernels)] + [('ours', 'ours', 'installed')]
    side_args = {key: [*forwarded, '--side', side, '--official-kernel', kernel]
                 for key, side, kernel in runs}
    if args.sequential:
        sides = {key: common.run_side(Path(__file__), a) for key, a in side_args.items()}
    else:
        sides = common.run_interleaved(Path(__file__), side_args, args.repeats)
    if 'official_native' in sides and sides['official']['local_corr'] != 'fused':
        del sides['official_native']  # no fused kernel installed: 'official' is the fallback
    ratio_speed = sides['ours']['pairs_per_second'] / sides['official']['pairs_per_second']
    ratio_mem = sides['ours']['peak_memory_mb'] / sides['official']['peak_memory_mb']
    result = {'benchmark': 'model_forward', 'command': ' '.join(['bench/bench_model.py',
                                                                  *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting, 'batch': args.batch,
              'bidirectional': args.bidirectional, 'device': args.device,
              'our_precision': args.precision,
              'weights': 'seeded random (timing only; no accuracy meaning)',
              **sides, 'throughput_ratio_ours_over_official': ratio_speed,
              'peak_memory_ratio_ours_over_official': ratio_mem}
    if 'official_native' in sides:
        result['throughput_ratio_ours_over_official_native'] = (
            sides['ours']['pairs_per_second'] / sides['official_native']['pairs_per_second'])
    common.report(result, f'{args.setting} {sides["ours"]["H"]}x{sides["ours"]["W"]} '
                          f'batch {args.batch}{" bidir" if args.bidirectional else ""} on '
                          f'{args.device}: ours {sides["ours"]["pairs_per_second"]:.3f} pairs/s, '
                          f'official {sides["official"]["pairs_per_second"]:.3f} pairs/s '
                          f'(x{ratio_speed:.2f}); peak memory x{ratio_mem:.2f}')


if __name__ == '__main__':
    main()
