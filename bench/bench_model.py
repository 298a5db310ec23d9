"""Forward throughput and peak memory: our RoMaV2 vs the official romav2 2.0.1.

Same seeded random weights, same setting and resolution, same device, measured back to back in
one run (each side in its own subprocess so peak memory is its own). Prints JSON with both
sides and the ratios (ours / official); the headline is the throughput ratio.

    .venv/bin/python bench/bench_model.py --setting base --batch 1
    .venv/bin/python bench/bench_model.py --setting turbo --batch 8 --bidirectional --device cuda
    .venv/bin/python bench/bench_model.py --smoke      # CI: turbo at 64x96, 1 repeat
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def measure(args) -> dict:
    torch.manual_seed(0)
    overrides = {}
    if args.size:
        overrides.update(H_lr=args.size[0], W_lr=args.size[1])
    if args.side == 'ours' and args.precision != 'official':
        from romav2_core.config import RoMaV2Config
        policy = RoMaV2Config().with_precision(args.precision, args.device)
        overrides.update({k: getattr(policy, k) for k in (
            'amp_dtype', 'backbone_amp', 'matcher_amp', 'dpt_amp', 'refiner_amp',
            'vgg_amp_on_cuda', 'mv_rope_bf16')})
    model = common.build(args.side, args.setting, args.device, **overrides)
    model.bidirectional = args.bidirectional
    H, W = model.H_lr, model.W_lr
    g = torch.Generator().manual_seed(1)
    img_A = torch.rand(args.batch, 3, H, W, generator=g).to(args.device)
    img_B = torch.rand(args.batch, 3, H, W, generator=g).to(args.device)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    times = common.timed(lambda: model(img_A, img_B), args.device, args.repeats)
    return {'side': args.side, 'seconds_per_batch': common.median(times), 'all_seconds': times,
            'pairs_per_second': args.batch / common.median(times),
            'peak_memory_mb': common.peak_memory_mb(args.device), 'H': H, 'W': W}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--setting', default='base', choices=['turbo', 'fast', 'base'])
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), help='override H_lr W_lr')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--bidirectional', action='store_true')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--precision', default='official', choices=['official', 'auto', 'fp32'],
                   help='our side\'s precision policy; "official" = the same bf16 policy as '
                        'the official side (a like-for-like comparison); "auto" = the node\'s '
                        'default (fp32 where bf16 is emulated). The official side always runs '
                        'its own policy')
    p.add_argument('--smoke', action='store_true', help='tiny case for CI (64x96, 1 repeat)')
    p.add_argument('--side', choices=['ours', 'official'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.setting, args.size, args.repeats = 'turbo', [64, 96], 1
    if args.side:
        import json
        print(json.dumps(measure(args)))
        return

    forwarded = [a for a in sys.argv[1:] if a != '--smoke']
    if args.smoke:
        forwarded += ['--setting', 'turbo', '--size', '64', '96', '--repeats', '1']
    sides = {s: common.run_side(Path(__file__), [*forwarded, '--side', s])
             for s in ('official', 'ours')}
    ratio_speed = sides['ours']['pairs_per_second'] / sides['official']['pairs_per_second']
    ratio_mem = sides['ours']['peak_memory_mb'] / sides['official']['peak_memory_mb']
    result = {'benchmark': 'model_forward', 'command': ' '.join(['bench/bench_model.py',
                                                                  *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting, 'batch': args.batch,
              'bidirectional': args.bidirectional, 'device': args.device,
              'our_precision': args.precision,
              'weights': 'seeded random (timing only; no accuracy meaning)',
              'official': sides['official'], 'ours': sides['ours'],
              'throughput_ratio_ours_over_official': ratio_speed,
              'peak_memory_ratio_ours_over_official': ratio_mem}
    common.report(result, f'{args.setting} {sides["ours"]["H"]}x{sides["ours"]["W"]} '
                          f'batch {args.batch}{" bidir" if args.bidirectional else ""} on '
                          f'{args.device}: ours {sides["ours"]["pairs_per_second"]:.3f} pairs/s, '
                          f'official {sides["official"]["pairs_per_second"]:.3f} pairs/s '
                          f'(x{ratio_speed:.2f}); peak memory x{ratio_mem:.2f}')


if __name__ == '__main__':
    main()
