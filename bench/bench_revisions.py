"""Our model at two revisions of the code, interleaved call by call: did a change speed it up?

Side ``base``: ``romav2_core`` and ``cuda_ext`` of git revision ``--base`` (exported with
``git archive`` into a temporary folder, first on the import path); side ``worktree``: the
working tree. Same seeded weights, setting and inputs; each side in its own interpreter, both
warmed up, then their forwards alternate (the order flips every round), so a shared machine's
load hits both alike (``--sequential``: all of one side's rounds, then the other's). Prints
JSON (both sides, the ratio of median times and every round's ratio) and a summary line.

    .venv/bin/python bench/bench_revisions.py --base a65628c --setting base --batch 1
    .venv/bin/python bench/bench_revisions.py --base HEAD~3 --precision fp32 --rounds 4
    .venv/bin/python bench/bench_revisions.py --smoke     # CI: HEAD vs worktree, 64x96
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PACKAGES = ('romav2_core', 'cuda_ext')


def export(rev: str, folder: str) -> str:
    """``PACKAGES`` at ``rev`` into ``folder``; returns the full commit id."""
    commit = subprocess.run(['git', 'rev-parse', rev], cwd=common.ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(['git', 'archive', commit, *PACKAGES], cwd=common.ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', folder], input=archive, check=True)
    return commit


def serve(args) -> None:
    import romav2_core
    overrides = common.precision_overrides(args.precision, args.device)
    if args.size:
        overrides.update(H_lr=args.size[0], W_lr=args.size[1])
    model = common.build('ours', args.setting, args.device, **overrides)
    model.bidirectional = args.bidirectional
    g = torch.Generator().manual_seed(1)
    img_A, img_B = (torch.rand(args.batch, 3, model.H_lr, model.W_lr, generator=g)
                    .to(args.device) for _ in range(2))
    common.timed(lambda: model(img_A, img_B), args.device, 0, warmup=1)
    common.serve(lambda: model(img_A, img_B), args.device, lambda times: {
        'seconds_per_batch': common.median(times), 'all_seconds': times,
        'pairs_per_second': args.batch / common.median(times),
        'peak_memory_mb': common.peak_memory_mb(args.device), 'H': model.H_lr, 'W': model.W_lr,
        'romav2_core': str(Path(romav2_core.__file__).parent)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--base', default='HEAD', help='git revision of the base side')
    common.add_case_arguments(p)
    p.add_argument('--precision', default='official', choices=['official', 'auto', 'fp32'])
    p.add_argument('--rounds', type=int, default=4)
    p.add_argument('--sequential', action='store_true',
                   help="one side's rounds after the other's (one model in memory at a time)")
    p.add_argument('--smoke', action='store_true', help='CI: 64x96, 1 round')
    p.add_argument('--serve', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.setting, args.size, args.rounds = 'turbo', [64, 96], 1
    if args.serve:
        serve(args)
        return
    forwarded = [a for a in sys.argv[1:] if a != '--smoke']
    if args.smoke:
        forwarded += ['--setting', 'turbo', '--size', '64', '96']
    with tempfile.TemporaryDirectory(prefix='romav2_rev_') as folder:
        commit = export(args.base, folder)
        path = os.pathsep.join([folder, os.environ.get('PYTHONPATH', '')])
        script = Path(__file__)
        env = {'base': {'PYTHONPATH': path}}
        if args.sequential:
            sides = {name: common.run_interleaved(script, {name: forwarded}, args.rounds,
                                                  env=env)[name]
                     for name in ('base', 'worktree')}
        else:
            sides = common.run_interleaved(script, {'base': forwarded, 'worktree': forwarded},
                                           args.rounds, env=env)
    assert sides['base']['romav2_core'].startswith(folder), sides['base']['romav2_core']
    speedup = sides['base']['seconds_per_batch'] / sides['worktree']['seconds_per_batch']
    rounds = [b / w for b, w in zip(sides['base']['all_seconds'],
                                    sides['worktree']['all_seconds'])]
    result = {'benchmark': 'revisions', 'command': ' '.join(['bench/bench_revisions.py',
                                                              *sys.argv[1:]]),
              'machine': common.machine(), 'base_commit': commit, 'setting': args.setting,
              'batch': args.batch, 'bidirectional': args.bidirectional, 'device': args.device,
              'precision': args.precision, 'sequential': args.sequential,
              'weights': 'seeded random (timing only; no accuracy meaning)', **sides,
              'speedup_worktree_over_base': speedup, 'speedup_per_round': rounds}
    common.report(result, f'{args.setting} {sides["worktree"]["H"]}x{sides["worktree"]["W"]} '
                          f'batch {args.batch} {args.precision} on {args.device}: worktree '
                          f'{sides["worktree"]["seconds_per_batch"]:.2f} s vs {args.base} '
                          f'({commit[:8]}) {sides["base"]["seconds_per_batch"]:.2f} s per batch '
                          f'-> x{speedup:.2f} (rounds {", ".join(f"{r:.2f}" for r in rounds)})')


if __name__ == '__main__':
    main()
