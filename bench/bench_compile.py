"""torch.compile of our RoMaV2: compile time cold and after a restart (on-disk cache), compiled
vs eager outputs and speed, graph breaks.

Each phase runs in a fresh interpreter with the same ``TORCHINDUCTOR_CACHE_DIR``:

1. ``cold``: an empty cache. Builds an eager and a compiled model (same seeded weights), times
   ``compile.warm_up`` (compilation included) for each direction asked, compares compiled and
   eager outputs (max |difference| per output) and times both forwards.
2. ``warm``: the same cache, a new process (a node restart): times ``warm_up`` again and
   checks the outputs are the cold run's.

Prints one JSON document (machine, command, both phases) on stdout, a summary on stderr.

    .venv/bin/python bench/bench_compile.py --setting turbo --bidirectional both
    .venv/bin/python bench/bench_compile.py --setting base --device cuda --mode max-autotune
    .venv/bin/python bench/bench_compile.py --smoke      # CI: 64x96, aot_eager (no codegen)
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KEYS = ('warp_AB', 'overlap_AB', 'precision_AB', 'warp_BA', 'overlap_BA')


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # inductor's compile workers
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def phase(args) -> dict:
    from romav2_core.compile import compile_model, graph_break_count, warm_up
    from torch._dynamo.utils import counters
    overrides = common.precision_overrides(args.precision, args.device)
    if args.size:
        overrides.update(H_lr=args.size[0], W_lr=args.size[1])
    build = lambda: common.build('ours', args.setting, args.device, **overrides)  # noqa: E731
    eager = build()
    model = compile_model(build(), args.mode, cache_dir=args.cache_dir, backend=args.backend)
    g = torch.Generator().manual_seed(1)
    img_A, img_B = (torch.rand(args.batch, 3, model.H_lr, model.W_lr, generator=g)
                    .to(args.device) for _ in range(2))
    directions = {'uni': [False], 'bidir': [True], 'both': [False, True]}[args.bidirectional]
    rows = []
    for bidirectional in directions:
        eager.bidirectional = model.bidirectional = bidirectional
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        warm_up(model, batch=args.batch)
        row = {'bidirectional': bidirectional,
               'warm_up_wall_s': time.perf_counter() - wall0,
               'warm_up_cpu_s': _cpu_seconds() - cpu0}
        compiled_out = model.match(img_A, img_B)
        if args.phase == 'cold':
            want = eager.match(img_A, img_B)
            row['max_abs_diff_compiled_vs_eager'] = {
                k: float((compiled_out[k] - want[k]).abs().max()) for k in KEYS
                if want[k] is not None}
            row['scale'] = {k: float(want[k].abs().max()) for k in KEYS if want[k] is not None}
            for name, m in (('eager', eager), ('compiled', model)):
                times = common.timed(lambda m=m: m.match(img_A, img_B), args.device,
                                     args.repeats, warmup=1)
                row[f'{name}_s_per_batch'] = common.median(times)
        row['warp_AB_checksum'] = float(compiled_out['warp_AB'].double().sum())
        rows.append(row)
    return {'phase': args.phase, 'rows': rows, 'graph_breaks': graph_break_count(),
            'unique_graphs': counters['stats']['unique_graphs'], 'H': model.H_lr,
            'W': model.W_lr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--setting', default='turbo', choices=['turbo', 'fast', 'base'])
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), help='override H_lr W_lr')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--bidirectional', default='both', choices=['uni', 'bidir', 'both'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--precision', default='official', choices=['official', 'auto', 'fp32'])
    p.add_argument('--mode', default='default',
                   choices=['default', 'max-autotune', 'reduce-overhead'])
    p.add_argument('--backend', default='inductor')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--cache-dir', help='inductor cache (default: a new temporary folder)')
    p.add_argument('--smoke', action='store_true', help='CI: 64x96, aot_eager, 1 repeat')
    p.add_argument('--phase', choices=['cold', 'warm'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.size, args.backend, args.repeats = [64, 96], 'aot_eager', 1
    if args.phase:
        print(json.dumps(phase(args)))
        return
    with tempfile.TemporaryDirectory(prefix='romav2_compile_') as tmp:
        cache_dir = args.cache_dir or tmp
        forwarded = [a for a in sys.argv[1:] if a != '--smoke']
        if args.smoke:
            forwarded += ['--size', '64', '96', '--backend', 'aot_eager', '--repeats', '1']
        phases = {name: common.run_side(Path(__file__), [*forwarded, '--cache-dir', cache_dir,
                                                          '--phase', name])
                  for name in ('cold', 'warm')}
    for cold, warm in zip(phases['cold']['rows'], phases['warm']['rows']):
        warm['same_outputs_as_cold'] = warm['warp_AB_checksum'] == cold['warp_AB_checksum']
    result = {'benchmark': 'compile', 'command': ' '.join(['bench/bench_compile.py',
                                                            *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting, 'batch': args.batch,
              'device': args.device, 'precision': args.precision, 'mode': args.mode,
              'backend': args.backend, 'weights': 'seeded random (timing only)', **phases}
    first_cold, first_warm = phases['cold']['rows'][0], phases['warm']['rows'][0]
    diffs = phases['cold']['rows'][-1]['max_abs_diff_compiled_vs_eager']
    common.report(result, f'compile {args.setting} {phases["cold"]["H"]}x{phases["cold"]["W"]} '
                          f'{args.mode}/{args.backend} on {args.device}: warm-up cold '
                          f'{first_cold["warm_up_wall_s"]:.0f} s, after restart '
                          f'{first_warm["warm_up_wall_s"]:.0f} s; graph breaks '
                          f'{phases["cold"]["graph_breaks"]}; max |compiled - eager| warp '
                          f'{diffs["warp_AB"]:.1e}; eager {first_cold["eager_s_per_batch"]:.2f} '
                          f's vs compiled {first_cold["compiled_s_per_batch"]:.2f} s')


if __name__ == '__main__':
    main()
