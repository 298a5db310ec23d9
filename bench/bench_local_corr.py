#!/usr/bin/env python3
"""Time and peak memory of the refiners' local correlation, three ways.

* ``cuda``: the fused kernel of ``cuda_ext`` (no buffer besides the output);
* ``torch_kloop``: ``romav2_core.local_correlation(..., impl='torch')``, one grid_sample per
  offset (O(B*H*W*(K + C)) extra memory);
* ``materialise``: one grid_sample of all K windows per batch element and a channel sum, as the
  official fallback (``native_torch_local_corr``) does (C*H*W*K floats, twice).

Shapes are the refiners' of the ``base`` (640 x 640) and ``precise`` (1280 x 1280) settings:
stride 4 (C=192, r=3, K=49) and stride 2 (C=48, r=1, K=9), batch 1 and 8. On a machine without
CUDA the torch paths run on the CPU at a reduced size (``--small``, the default there: spatial
size / 8, batch 1 and 2) and the kernel is reported unavailable.

Prints one JSON document (machine, torch, device, command, cases) on stdout and a one-line
summary on stderr, as the other benchmarks.
Usage: ``python bench/bench_local_corr.py [--small|--full] [--dtype fp32|bf16|fp16]
[--repeats N] [--impls cuda,torch_kloop,materialise] [--layout channels_last|nchw]
[--json-out FILE]``
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # after an installed romav2_ros (a colcon install space)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# (setting, image side, stride, C, radius)
SHAPES = [
    ('base', 640, 4, 192, 3),
    ('base', 640, 2, 48, 1),
    ('precise', 1280, 4, 192, 3),
    ('precise', 1280, 2, 48, 1),
]
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def materialise(f_A, f_B, warp, radius):
    """Materialising implementation ([B, K, H, W] fp32), per batch element as the official."""
    from romav2_core.local_correlation import window_offsets
    B, C, H, W = f_A.shape
    off = window_offsets(radius, H, W, device=f_A.device)
    K = off.shape[0]
    out = f_A.new_empty(B, K, H, W, dtype=torch.float32)
    for b in range(B):
        coords = (warp[b, :, :, None].float() + off).reshape(1, H, W * K, 2)
        win = F.grid_sample(f_B[b:b + 1].float(), coords, mode='bilinear', padding_mode='zeros',
                            align_corners=False).reshape(C, H, W, K)
        out[b] = (f_A[b, :, :, :, None].float() / C ** 0.5 * win).sum(0).permute(2, 0, 1)
    return out


def make_impls():
    from romav2_core.local_correlation import local_correlation
    import romav2_cuda_ext as cuda_ext

    impls = {
        'torch_kloop': lambda a, b, w, r: local_correlation(a, b, w, r, impl='torch'),
        'materialise': materialise,
    }
    if torch.cuda.is_available() and cuda_ext.is_available():
        impls['cuda'] = lambda a, b, w, r: cuda_ext.local_correlation(a, b, w, r).permute(
            0, 3, 1, 2)
    return impls, cuda_ext


def inputs(B, C, H, W, dtype, device, seed=0, layout='channels_last'):
    """Features in ``layout``: channels-last is what the refiners pass (their projected BHWC
    features, permuted), read in place by the kernel and the K-loop."""
    g = torch.Generator().manual_seed(seed)
    memory_format = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
    f_A, f_B = (torch.randn(B, C, H, W, generator=g).to(device, dtype)
                .contiguous(memory_format=memory_format) for _ in range(2))
    # A smooth warp (identity plus a small deformation), partly outside the image.
    ys = torch.linspace(-1, 1, H)
    xs = torch.linspace(-1, 1, W)
    gy, gx = torch.meshgrid(ys, xs, indexing='ij')
    warp = torch.stack((gx * 1.05 + 0.02 * torch.sin(3 * gy), gy * 1.05 + 0.02 * torch.cos(3 * gx)),
                       -1)[None].expand(B, H, W, 2).contiguous().to(device)
    return f_A, f_B, warp


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fn, args, device, repeats, warmup):
    """(median ms, extra peak bytes over the inputs or None on CPU, output)."""
    out = None
    for _ in range(warmup):
        out = fn(*args)
        sync(device)
    del out
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn(*args)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if _ < repeats - 1:
            del out
    peak = None
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) - base
    return statistics.median(times), peak, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument('--small', action='store_true', default=None,
                      help='spatial size / 8, batch 1 and 2 (default without CUDA)')
    size.add_argument('--full', dest='small', action='store_false',
                      help='the real refiner shapes (default with CUDA)')
    ap.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    ap.add_argument('--repeats', type=int, default=None, help='timed runs per case (median)')
    ap.add_argument('--batches', default=None, help='comma list (default 1,8; small: 1,2)')
    ap.add_argument('--impls', default='cuda,torch_kloop,materialise')
    ap.add_argument('--layout', choices=['channels_last', 'nchw'], default='channels_last',
                    help="the features' memory layout (the refiners': channels_last)")
    ap.add_argument('--json-out', default=None, help='also write the JSON here')
    args = ap.parse_args(argv)

    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    small = (device.type != 'cuda') if args.small is None else args.small
    repeats = args.repeats or (10 if device.type == 'cuda' else 3)
    batches = [int(b) for b in (args.batches or ('1,2' if small else '1,8')).split(',')]
    dtype = DTYPES[args.dtype]
    if device.type == 'cpu':
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    impls, cuda_ext = make_impls()
    wanted = [n for n in args.impls.split(',') if n]
    cuda_note = None
    if 'cuda' in wanted and 'cuda' not in impls:
        cuda_note = ('CUDA kernel unavailable: ' + (cuda_ext.load_error() or 'unknown')
                     if device.type == 'cuda' else
                     'CUDA kernel unavailable: no CUDA device (torch.cuda.is_available() is '
                     'False)')

    cases = []
    for setting, side, stride, C, r in SHAPES:
        H = W = side // stride // (8 if small else 1)
        for B in batches:
            f_A, f_B, warp = inputs(B, C, H, W, dtype, device, layout=args.layout)
            case = {'setting': setting, 'image': side, 'stride': stride, 'B': B, 'C': C,
                    'H': H, 'W': W, 'radius': r, 'K': (2 * r + 1) ** 2, 'dtype': args.dtype,
                    'layout': args.layout, 'results': {}}
            ref = None
            for name in wanted:
                if name not in impls:
                    case['results'][name] = {'status': 'unavailable'}
                    continue
                try:
                    with torch.inference_mode():
                        ms, peak, out = measure(impls[name], (f_A, f_B, warp, r), device,
                                                repeats, warmup=1 if small else 2)
                except torch.cuda.OutOfMemoryError as exc:
                    case['results'][name] = {'status': 'oom', 'error': str(exc).splitlines()[0]}
                    torch.cuda.empty_cache()
                    continue
                res = {'status': 'ok', 'ms': round(ms, 4),
                       'peak_extra_bytes': peak,
                       'output_bytes': out.numel() * out.element_size()}
                if ref is None:
                    ref = out.float()
                    res['max_abs_diff_vs_first'] = 0.0
                else:
                    res['max_abs_diff_vs_first'] = float((out.float() - ref).abs().max())
                case['results'][name] = res
                del out
            cases.append(case)
            del f_A, f_B, warp, ref
            if device.type == 'cuda':
                torch.cuda.empty_cache()

    report = {
        'machine': {'node': platform.node(), 'arch': platform.machine(),
                    'cpus': os.cpu_count(), 'python': platform.python_version()},
        'torch': torch.__version__, 'torch_cuda': torch.version.cuda,
        'device': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                   else f'cpu ({torch.get_num_threads()} threads)'),
        'command': ' '.join([Path(sys.executable).name] + sys.argv),
        'small': small, 'repeats': repeats, 'cuda_kernel': cuda_note or (
            'active: ' + str(cuda_ext.active_path()) if 'cuda' in impls else 'not requested'),
        'cases': cases,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + '\n')
    print(summary(cases, cuda_note, device), file=sys.stderr)  # stdout stays pure JSON
    return 0


def summary(cases, cuda_note, device):
    parts = []
    for c in cases:
        res = c['results']
        ok = {k: v for k, v in res.items() if v.get('status') == 'ok'}
        tag = '{}/s{} B{} {}x{}'.format(c['setting'], c['stride'], c['B'], c['H'], c['W'])
        cells = []
        for name, v in ok.items():
            mem = '' if v['peak_extra_bytes'] is None else ' {:.0f}MB'.format(
                v['peak_extra_bytes'] / 2 ** 20)
            cells.append('{} {:.2f}ms{}'.format(name, v['ms'], mem))
        cells += ['{} {}'.format(n, v['status']) for n, v in res.items() if n not in ok]
        parts.append('{}: {}'.format(tag, ', '.join(cells)))
    head = 'local corr on {}'.format(device.type)
    if cuda_note:
        head += ' ({})'.format(cuda_note)
    return head + ' | ' + ' | '.join(parts)


if __name__ == '__main__':
    sys.exit(main())
