"""Where one forward of our RoMaV2 spends its time: per component and per op (JSON).

Components are timed with forward hooks (wall time on the CPU; CUDA-synchronised on a GPU):
DINOv3 (A and B), VGG19-BN, the multi-view transformer, the match embedding, the DPT head and
each refiner, with the refiners' local correlation split out. The op table is the top of
``torch.profiler``'s self-time table over the same forward.

    .venv/bin/python bench/profile_model.py --setting base --batch 1
    .venv/bin/python bench/profile_model.py --setting base --batch 1 --precision fp32
    .venv/bin/python bench/profile_model.py --smoke      # CI: turbo 64x96
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _component_timer(model, device: str):
    """Forward hooks that accumulate wall time per named component; returns (totals, hooks)."""
    totals = collections.defaultdict(float)
    starts = {}
    parts = {'dinov3': model.f, 'vgg': model.refiner_features, 'mv_vit': model.matcher.mv_vit,
             'dpt_head': model.matcher.head, 'matcher_total': model.matcher,
             **{f'refiner_{s}': model.refiners[str(s)] for s in (4, 2, 1)}}
    hooks = []
    for name, module in parts.items():
        def pre(_m, _i, name=name):
            common.sync(device)
            starts[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):
            common.sync(device)
            totals[name] += time.perf_counter() - starts[name]
        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return totals, hooks


@contextlib.contextmanager
def _timed_local_correlation(totals, device: str):
    from romav2_core import refiner
    original = refiner.local_correlation

    def timed(*args, **kwargs):
        common.sync(device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        common.sync(device)
        totals['local_correlation'] += time.perf_counter() - t0
        return out
    refiner.local_correlation = timed
    try:
        yield
    finally:
        refiner.local_correlation = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common.add_case_arguments(p)
    p.add_argument('--precision', default='official', choices=['official', 'auto', 'fp32'])
    p.add_argument('--repeats', type=int, default=1, help='timed forwards (after one warm-up)')
    p.add_argument('--top', type=int, default=25, help='rows of the op table')
    p.add_argument('--smoke', action='store_true', help='tiny case for CI (64x96)')
    args = p.parse_args()
    if args.smoke:
        args.setting, args.size, args.top = 'turbo', [64, 96], 5
    model, _ = common.build_side('ours', args.setting, args.device, args.precision, args.size)
    model.bidirectional = args.bidirectional
    g = torch.Generator().manual_seed(1)
    imgs = [torch.rand(args.batch, 3, model.H_lr, model.W_lr, generator=g).to(args.device)
            for _ in range(2)]
    model(*imgs)  # warm-up (allocator, oneDNN primitive cache, cuDNN)
    totals, hooks = _component_timer(model, args.device)
    with _timed_local_correlation(totals, args.device):
        walls = common.timed(lambda: model(*imgs), args.device, args.repeats, warmup=0)
    for h in hooks:
        h.remove()
    components = {k: v / args.repeats for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith('cuda'):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        model(*imgs)
    sort_key = 'self_cuda_time_total' if args.device.startswith('cuda') else 'self_cpu_time_total'
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, sort_key))
    total_us = sum(getattr(e, sort_key) for e in events)
    ops = [{'op': e.key, 'calls': e.count, 'self_s': getattr(e, sort_key) / 1e6,
            'fraction': getattr(e, sort_key) / total_us} for e in events[:args.top]]
    wall = common.median(walls)
    result = {'benchmark': 'profile', 'command': ' '.join(['bench/profile_model.py',
                                                          *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting, 'batch': args.batch,
              'bidirectional': args.bidirectional, 'device': args.device,
              'precision': args.precision, 'H': model.H_lr, 'W': model.W_lr,
              'weights': 'seeded random (timing only)', 'forward_seconds': wall,
              'components_seconds': components, 'ops': ops}
    top = ', '.join(f'{k} {v:.2f}s' for k, v in list(components.items())[:6])
    common.report(result, f'{args.setting} {model.H_lr}x{model.W_lr} batch {args.batch} '
                          f'{args.precision}: {wall:.2f} s/forward; {top}')


if __name__ == '__main__':
    main()
