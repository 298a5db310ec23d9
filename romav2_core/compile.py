"""``torch.compile`` of RoMaV2: the compile boundary, the on-disk cache, warm-up, graph breaks.

Boundary: the four submodules ``f`` (DINOv3), ``refiner_features`` (VGG19-BN), ``matcher``
(mv-ViT, match embedding, DPT head) and ``refiners`` (the three refiners of one pass) are
compiled whole, each with ``fullgraph=True`` (a graph break is an error, so the model's forward
has none) and static shapes (``dynamic=False``). What stays eager, between them: input
conversion and resizing (camera sizes vary), normalisation, the TF32 check and region, the
local-correlation path resolution (it may log and load ``cuda_ext``), the stage and direction
loops, the fp16 overflow guard (data-dependent) and the outputs (overlap, precision,
covariance). The official autocast regions sit inside the parts and are traced as such.

Shapes: a node runs one resolution and one batch composition, so static shapes give the best
kernels and are what CUDA graphs need; ``turbo`` and ``base`` (or an HR pass, or encoding 1
vs 2 images) are separate graphs of the same part, compiled on first use and all kept (up to
``torch._dynamo.config.recompile_limit`` = 8 per part).

Cache: inductor's FX-graph and AOT caches live in ``TORCHINDUCTOR_CACHE_DIR``; unless that is
already set, :func:`compile_model` points it at ``~/.cache/romav2_ros/torch_compile`` (torch's
default is under /tmp, which a robot's reboot wipes), so a restart reuses the generated code
and only re-traces (measured in ``bench/bench_compile.py``).

Use (the node's worker thread, which owns the model)::

    model = RoMaV2.from_pretrained(..., compile='max-autotune')   # or compile_model(model, mode)
    warm_up(model, batch=1, stream=mode == 'sequential')          # compiles; before live frames

Both calls belong on the thread that later runs inference: CUDA graphs
(``reduce-overhead``) are recorded per thread.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch
from torch import Tensor

from romav2_core.config import COMPILE_MODES

#: The compiled submodules (attribute names of ``RoMaV2``).
COMPILED_PARTS = ('f', 'refiner_features', 'matcher', 'refiners')


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser('~'), '.cache', 'romav2_ros', 'torch_compile')


def use_cache_dir(cache_dir: Optional[str] = None) -> str:
    """Point inductor's on-disk caches at ``cache_dir`` (or keep ``TORCHINDUCTOR_CACHE_DIR``
    when set, else :func:`default_cache_dir`); returns the folder. Process-wide."""
    if cache_dir is None:
        cache_dir = os.environ.get('TORCHINDUCTOR_CACHE_DIR') or default_cache_dir()
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache_dir
    return cache_dir


def compile_model(model, mode: Optional[str] = None, cache_dir: Optional[str] = None,
                  backend: str = 'inductor'):
    """Compile ``model``'s four parts in place (lazily: the work happens on the first call,
    see :func:`warm_up`) and return it. ``mode``: one of ``config.COMPILE_MODES`` (default
    ``model.cfg.compile``); ``'off'`` goes back to eager. The state dict is unchanged.
    ``backend``: torch.compile's (``'aot_eager'`` checks tracing without code generation)."""
    mode = model.cfg.compile if mode is None else mode
    if mode not in COMPILE_MODES:
        raise ValueError(f'compile mode {mode!r}: one of {COMPILE_MODES}')
    model.compiled_parts.clear()
    model.cfg = model.cfg.replace(compile=mode)
    if mode == 'off':
        return model
    use_cache_dir(cache_dir)
    options = dict(fullgraph=True, dynamic=False, backend=backend,
                   mode=None if mode == 'default' else mode)
    for name in COMPILED_PARTS:
        compiled = torch.compile(getattr(model, name), **options)
        model.compiled_parts[name] = _fresh_outputs(compiled) if mode == 'reduce-overhead' \
            else compiled
    return model


def _fresh_outputs(compiled: Callable) -> Callable:
    """CUDA graphs (``reduce-overhead``) reuse their output memory at the next replay, but a
    stream keeps the previous frame's features: every call starts a new cudagraph step and its
    outputs are copied out of the graph's pool."""
    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return _clone(compiled(*args, **kwargs))
    return call


def _clone(value):
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return type(value)((k, _clone(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def warm_up_runs(mode: str) -> int:
    """Calls a warm-up needs under compile ``mode`` before a live call neither compiles nor
    records: 3 with ``reduce-overhead`` (CUDA graph trees warm up, record, then replay), else 1
    (the first call compiles)."""
    return 3 if mode == 'reduce-overhead' else 1


def warm_up(model, batch: int = 1, stream: bool = False, runs: Optional[int] = None,
            seed: int = 0) -> list[float]:
    """Run every call the node will make, on random images at the working resolution, so the
    first live frame neither compiles nor records a CUDA graph.

    ``batch``: pairs per call; ``stream``: the sequential mode's calls (``encode`` one frame at
    a time, then ``match_features``) instead of ``match`` (both images in one encoder batch).
    ``runs``: repetitions, default :func:`warm_up_runs` of the model's mode. Returns the seconds of each run (the first one includes the
    compilation). Call it on the thread that runs inference.
    """
    runs = runs or warm_up_runs(model.cfg.compile)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * batch, 3, model.cfg.H_lr, model.cfg.W_lr),
                           generator=g, dtype=torch.uint8).to(model.device)
    img_A, img_B = images[:batch], images[batch:]
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if stream:
            prev = model.encode(img_B)
            model.match_features(model.encode(img_A), prev)
        else:
            model.match(img_A, img_B)
        if model.device.type == 'cuda':
            torch.cuda.synchronize(model.device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def graph_break_count() -> int:
    """Graph breaks dynamo recorded in this process (0 for the model's forward: the parts are
    compiled with ``fullgraph=True``, where a break is an error instead)."""
    from torch._dynamo.utils import counters
    return sum(counters['graph_break'].values())
