"""Shared pieces of the benchmarks: machine facts, model builders, timing, one JSON report.

Every benchmark measures both sides of a comparison in one run (ours and the official
romav2 2.0.1, same seeded weights, same setting, same device); on the CPU each side runs in its
own subprocess so that its peak resident memory can be read separately (ru_maxrss).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'test'))  # the official-model oracle lives with the tests


def machine() -> dict:
    info = {'platform': platform.platform(), 'python': platform.python_version(),
            'torch': torch.__version__, 'cpu_count': os.cpu_count(),
            'torch_threads': torch.get_num_threads(),
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    try:
        cpuinfo = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        cpuinfo = []
    info['cpu'] = next((line.split(':', 1)[1].strip() for line in cpuinfo
                        if line.startswith('model name')), '?')
    # The bf16 hardware decides what the official policy costs on a CPU (emulated on AVX2).
    from romav2_core.precision import fast_bf16
    info['cpu_native_bf16'] = fast_bf16('cpu')
    flags = next((line.split() for line in cpuinfo if line.startswith('flags')), [])
    info['cpu_bf16_isa'] = [f for f in ('avx512_bf16', 'amx_bf16') if f in flags]
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    return info


PRECISION_FIELDS = ('amp_dtype', 'backbone_amp', 'matcher_amp', 'dpt_amp', 'refiner_amp',
                    'vgg_amp_on_cuda', 'mv_rope_bf16')


def precision_overrides(precision: str, device: str) -> dict:
    """Config fields of our side for a ``--precision`` choice: 'official' = the official bf16
    policy (like for like with the official side), else one of ``config.PRECISIONS``."""
    if precision == 'official':
        return {}
    from romav2_core.config import RoMaV2Config
    policy = RoMaV2Config().with_precision(precision, device)
    return {k: getattr(policy, k) for k in PRECISION_FIELDS}


def build(side: str, setting: str, device: str, seed: int = 0, official_fp32: bool = False,
          **overrides):
    """Our RoMaV2 or the official one, with the same seeded random weights (``official_fp32``:
    the official DINOv3/matcher amp off; run its forward under ``official_oracle.no_autocast``
    for an all-fp32 official model)."""
    from romav2_core.model import RoMaV2
    ours = RoMaV2.from_random(seed=seed, setting=setting, device=device, **overrides)
    if side == 'ours':
        return ours
    from official_oracle import build_official_model, fp32_cfg_overrides
    from romav2_core.dinov3 import DINOv3ViTL16

    class Backbone(DINOv3ViTL16):  # the official wrapper patches type(backbone).forward
        pass

    official = build_official_model(Backbone, setting=setting,
                                    cfg_overrides=fp32_cfg_overrides() if official_fp32 else None)
    torch.nn.Module.load_state_dict(official, ours.state_dict(), strict=True)
    for key in ('H_lr', 'W_lr', 'H_hr', 'W_hr', 'bidirectional'):
        setattr(official, key, getattr(ours, key))
    del ours
    return official.to(device)


def build_side(side: str, setting: str, device: str, precision: str,
               size: Optional[Sequence[int]] = None):
    """One side of an ours-vs-official comparison under a ``--precision`` choice.

    Returns ``(model, context)``: call the model inside ``context()`` (``no_autocast`` for the
    all-fp32 official side, else a no-op). ``size``: optional ``(H_lr, W_lr)``.
    """
    import contextlib
    from official_oracle import no_autocast
    overrides = {} if size is None else {'H_lr': size[0], 'W_lr': size[1]}
    if side == 'ours':
        overrides.update(precision_overrides(precision, device))
    official_fp32 = side == 'official' and precision == 'fp32'
    model = build(side, setting, device, official_fp32=official_fp32, **overrides)
    return model, (no_autocast if official_fp32 else contextlib.nullcontext)


def add_case_arguments(parser) -> None:
    """The options that name one model case: setting, resolution, batch, direction, device."""
    parser.add_argument('--setting', default='base', choices=['turbo', 'fast', 'base'])
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='override H_lr W_lr')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--bidirectional', action='store_true')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated by torch, or this process's peak resident set on the CPU."""
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs: list[float]) -> float:
    return statistics.median(xs)


#: Prefix of the lines a serving side writes for its controller.
PROTOCOL = '@@side '


class SideWorker:
    """One side of a comparison in its own interpreter (its own peak memory), serving timed
    calls one at a time (``script ... --serve``, see :func:`serve`), so that two sides can be
    interleaved call by call and see the same machine load."""

    def __init__(self, script: Path, args: list[str], env: Optional[dict] = None):
        self._log = tempfile.TemporaryFile(mode='w+')
        self._proc = subprocess.Popen([sys.executable, str(script), *args, '--serve'],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, text=True,
                                      env=None if env is None else {**os.environ, **env})
        self._command = f'{script.name} {" ".join(args)}'
        self._reply('ready')

    def _reply(self, expected: Optional[str] = None) -> str:
        """The next protocol line (other output, e.g. a library's log lines, is skipped)."""
        for line in self._proc.stdout:
            if line.startswith(PROTOCOL):
                reply = line[len(PROTOCOL):].strip()
                if expected is None or reply == expected:
                    return reply
                break
        self._proc.kill()
        self._log.seek(0)
        raise RuntimeError(f'{self._command} failed:\n{self._log.read()[-3000:]}')

    def time_call(self) -> float:
        self._proc.stdin.write('run\n')
        self._proc.stdin.flush()
        return float(self._reply())

    def finish(self) -> dict:
        self._proc.stdin.write('stop\n')
        self._proc.stdin.flush()
        result = json.loads(self._reply())
        self._proc.wait()
        return result


def serve(call, device: str, summary) -> None:
    """The worker side of :class:`SideWorker`: after the caller's warm-up, time ``call()`` on
    each ``run`` line of stdin; on ``stop`` print ``summary(times)`` as one JSON line."""
    print(f'{PROTOCOL}ready', flush=True)
    times = []
    for line in sys.stdin:
        if line.strip() == 'stop':
            break
        times.extend(timed(call, device, repeats=1, warmup=0))
        print(f'{PROTOCOL}{times[-1]}', flush=True)
    print(f'{PROTOCOL}{json.dumps(summary(times))}', flush=True)


def run_interleaved(script: Path, sides: dict[str, list[str]], rounds: int,
                    env: Optional[dict[str, dict]] = None) -> dict:
    """Start every side (one interpreter each, with its extra environment ``env[side]``), then
    time them call by call, ``rounds`` times, alternating the order each round; returns each
    side's summary."""
    env = env or {}
    workers = {name: SideWorker(script, args, env.get(name)) for name, args in sides.items()}
    names = list(workers)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            workers[name].time_call()
    return {name: worker.finish() for name, worker in workers.items()}


def run_side(script: Path, args: list[str]) -> dict:
    """Run ``script --side ...`` in a fresh interpreter and return its JSON line."""
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f'{script.name} {" ".join(args)} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(result: dict, summary: str) -> None:
    """The benchmark's JSON (stdout) and its one-line human summary (stderr)."""
    print(json.dumps(result, indent=2))
    print(summary, file=sys.stderr)
