"""Sequential-stream throughput: our cached-feature path vs the official ``match`` per pair.

A video stream matches frame t to frame t-1 for every t. Ours encodes each frame once
(``model.encode``) and matches the cached features (``model.match_features(f_t, f_prev)``);
the official romav2 2.0.1 has no feature cache, so it calls ``match(frame_t, frame_prev)``,
encoding both frames of every pair. Same seeded random weights, same setting and resolution,
same device; each side runs in its own subprocess (its own peak memory), back to back.

The frames are ``--frames`` crops of one random texture sliding right by 4 px per frame.
Each side processes ``--warmup-pairs`` untimed pairs first, then ``--frames`` frames;
frames/s = frames / wall time of the loop (one new frame = one output pair). Our first frame's
encode is not timed (the stream's start, nothing to match yet).

    .venv/bin/python bench/bench_stream.py --setting turbo --frames 8
    .venv/bin/python bench/bench_stream.py --setting base --device cuda --frames 50
    .venv/bin/python bench/bench_stream.py --smoke   # CI: turbo 64x96, 1 frame, no warm-up
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STEP_PX = 4


def frames(n: int, H: int, W: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    texture = torch.rand(1, 3, H, W + STEP_PX * (n + 1), generator=g)
    return [texture[..., k * STEP_PX:k * STEP_PX + W].contiguous().to(device)
            for k in range(n + 1)]


def measure(args) -> dict:
    model, precision_context = common.build_side(args.side, args.setting, args.device,
                                                 args.precision, args.size)
    model.bidirectional = args.bidirectional
    H, W = model.H_lr, model.W_lr
    w = args.warmup_pairs
    seq = frames(args.frames + w, H, W, args.device)  # frames + w + 1 images
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()

    if args.side == 'ours':
        def step(frame, prev):
            feats = model.encode(frame)
            model.match_features(feats, prev)
            return feats
        prev = model.encode(seq[0])  # the stream's first frame: encoded, nothing to match
    else:
        def step(frame, prev):
            with precision_context():
                model.match(frame, prev)
            return frame
        prev = seq[0]
    for frame in seq[1:1 + w]:  # warm-up pairs, not timed
        prev = step(frame, prev)

    per_frame = []
    common.sync(args.device)
    t_start = time.perf_counter()
    for frame in seq[1 + w:]:
        t0 = time.perf_counter()
        prev = step(frame, prev)
        common.sync(args.device)
        per_frame.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_start
    return {'side': args.side, 'frames': len(per_frame), 'seconds_total': total,
            'frames_per_second': len(per_frame) / total,
            'median_seconds_per_frame': common.median(per_frame), 'all_seconds': per_frame,
            'peak_memory_mb': common.peak_memory_mb(args.device), 'H': H, 'W': W}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--setting', default='turbo', choices=['turbo', 'fast', 'base', 'precise'])
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), help='override H_lr W_lr')
    p.add_argument('--frames', type=int, default=8, help='timed frames (= output pairs)')
    p.add_argument('--warmup-pairs', type=int, default=1, help='untimed pairs first')
    p.add_argument('--bidirectional', action='store_true')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--precision', default='official', choices=['official', 'auto', 'fp32'],
                   help='as bench_model.py: "official" = both sides under the official bf16 '
                        'policy, "fp32" = both all-fp32, "auto" = ours as the node runs it')
    p.add_argument('--smoke', action='store_true', help='CI: 64x96, 1 frame, no warm-up')
    p.add_argument('--side', choices=['ours', 'official'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.setting, args.size, args.frames, args.warmup_pairs = 'turbo', [64, 96], 1, 0
    if args.side:
        print(json.dumps(measure(args)))
        return

    forwarded = ['--setting', args.setting, '--frames', str(args.frames), '--device',
                 args.device, '--warmup-pairs', str(args.warmup_pairs),
                 '--precision', args.precision] + \
        (['--size', *map(str, args.size)] if args.size else []) + \
        (['--bidirectional'] if args.bidirectional else [])
    sides = {s: common.run_side(Path(__file__), [*forwarded, '--side', s])
             for s in ('official', 'ours')}
    speedup = sides['ours']['frames_per_second'] / sides['official']['frames_per_second']
    result = {'benchmark': 'stream', 'command': ' '.join(['bench/bench_stream.py',
                                                          *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting,
              'bidirectional': args.bidirectional, 'device': args.device,
              'our_precision': args.precision,
              'weights': 'seeded random (timing only; no accuracy meaning)',
              'ours_path': 'encode(frame_t) once + match_features(f_t, f_prev)',
              'official_path': 'official match(frame_t, frame_prev) per pair',
              'official': sides['official'], 'ours': sides['ours'],
              'frames_per_second_ratio_ours_over_official': speedup}
    o, f = sides['ours'], sides['official']
    common.report(result, f'stream {args.setting} {o["H"]}x{o["W"]} on {args.device}: ours '
                          f'{o["frames_per_second"]:.3f} frames/s (cached features), official '
                          f'{f["frames_per_second"]:.3f} frames/s (match per pair) '
                          f'(x{speedup:.2f})')


if __name__ == '__main__':
    main()
