"""``torch.compile`` of RoMaV2 (``romav2_core.compile``): compiled == eager, no graph break,
warm-up covers every graph the live calls need, the state dict is untouched.

Inductor's C++ code generation for the whole model takes minutes on a 2-core CPU, so the
model-level cases here compile with ``backend='aot_eager'`` (dynamo + AOT tracing, the same
graphs and fake tensors inductor receives, no code generation), and inductor itself runs on one
refiner (an autocast region, the BatchNorm fold, the constant cache). The whole-model inductor
comparison at ``turbo``/``base`` and the cache-reuse time are measured by
``bench/bench_compile.py`` (JSON in docs/bench-results/); the ``gpu`` case compiles the whole
model with inductor and CUDA graphs.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from random_weights import spread_state_dict
from romav2_core.compile import COMPILED_PARTS, compile_model, graph_break_count, warm_up
from romav2_core.config import RoMaV2Config
from romav2_core.model import RoMaV2

pytestmark = pytest.mark.slow

LR = (64, 96)
HR = (96, 128)
#: fp32: compiled vs eager, relative to each tensor's scale. The traced graph runs the same ops
#: in fp32, decompositions only reorder a few sums (measured <= 1.5e-6 here).
FP32_TOL = 1e-5
#: Official bf16 policy: tracing decomposes some bf16 ops (the DPT's bilinear resize becomes
#: bf16 index arithmetic, one rounding step off the fused CPU kernel), and the spread weights
#: amplify such steps the way they amplify any bf16 rounding. So the compiled model is held to
#: the bf16 policy's own error: its distance to the all-fp32 model may exceed the eager bf16
#: model's by at most this factor (measured 0.97-1.14 here, over all outputs and cases).
BF16_ERROR_FACTOR = 1.5


def _model(precision, state=None):
    model = RoMaV2.from_random(seed=4, setting='turbo', H_lr=LR[0], W_lr=LR[1],
                               dtype=torch.float32 if precision == 'fp32' else None)
    model.load_state_dict(state or spread_state_dict(model.state_dict(), seed=4))
    return model


@pytest.fixture(scope='module')
def models():
    """{precision: model} with the same weights; each is switched between eager and compiled
    (``compile_model``), so one instance gives both sides of a comparison."""
    bf16 = _model('bf16')
    return {'bf16': bf16, 'fp32': _model('fp32', bf16.state_dict())}


def _images(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 70, 110, generator=g) for _ in range(2)]


def _match(model, mode, images):
    compile_model(model, mode, backend='aot_eager')
    return model.match(*images)


def _scaled_error(got, want):
    assert got.shape == want.shape
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def _assert_close(got, want, tol):
    assert _scaled_error(got, want) <= tol, _scaled_error(got, want)


@pytest.mark.parametrize('bidirectional,hr', [(False, False), (True, True)],
                         ids=['uni', 'bidir-hr'])
def test_compiled_equals_eager(models, bidirectional, hr):
    """Unidirectional, and bidirectional with the HR pass (every graph of every part)."""
    before = graph_break_count()
    images = _images(1)
    out = {}
    for precision, model in models.items():
        model.bidirectional = bidirectional
        model.H_hr, model.W_hr = HR if hr else (None, None)
        out[precision] = {mode: _match(model, mode, images) for mode in ('off', 'default')}
    for key in ('warp_AB', 'overlap_AB', 'precision_AB', 'warp_BA', 'overlap_BA'):
        exact = out['fp32']['off'][key]
        if exact is None:
            assert out['fp32']['default'][key] is None and not bidirectional
            continue
        _assert_close(out['fp32']['default'][key], exact, FP32_TOL)
        compiled_error = _scaled_error(out['bf16']['default'][key], exact)
        eager_error = _scaled_error(out['bf16']['off'][key], exact)
        assert compiled_error <= BF16_ERROR_FACTOR * eager_error, (key, compiled_error,
                                                                  eager_error)
    assert graph_break_count() == before == 0


def test_state_dict_is_untouched_by_compile(models):
    model = compile_model(models['fp32'], 'default', backend='aot_eager')
    assert model.cfg.compile == 'default' and set(model.compiled_parts) == set(COMPILED_PARTS)
    assert list(model.state_dict()) == list(models['bf16'].state_dict())
    assert len(model.state_dict()) == 907


def test_warm_up_compiles_everything_the_live_calls_use(models):
    """After ``warm_up`` a live stream (another camera size, uint8 frames) triggers no new
    compilation: the resize runs eagerly, so camera sizes never reach the compiled graphs."""
    model = compile_model(models['fp32'], 'default', backend='aot_eager')
    model.bidirectional, model.H_hr, model.W_hr = False, None, None
    seconds = warm_up(model, batch=1, stream=True)
    assert len(seconds) == 1 and seconds[0] > 0
    compiled_graphs = counters['stats']['unique_graphs']
    g = torch.Generator().manual_seed(3)
    frames = [torch.randint(0, 256, (1, 3, 75, 120), generator=g, dtype=torch.uint8)
              for _ in range(3)]
    prev = model.encode(frames[0])
    for frame in frames[1:]:
        feats = model.encode(frame)
        out = model.match_features(feats, prev)
        prev = feats
        assert torch.isfinite(out['warp_AB']).all()
    assert counters['stats']['unique_graphs'] == compiled_graphs


def test_reduce_overhead_copies_outputs_out_of_the_graph_pool(monkeypatch):
    """A CUDA graph replays into the same output memory; ``reduce-overhead`` starts a new
    cudagraph step per call and copies the outputs out, so a frame's cached features survive
    the next frame's encode. Checked with a stand-in that reuses one output buffer per call
    (the real CUDA graphs run in the ``gpu`` test below)."""
    steps = []
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin', lambda: steps.append(1))
    pool = torch.zeros(3)

    def graph(x):  # writes its result into the same "pool" memory every call
        pool.copy_(x * 2)
        return {'taps': [pool], 'fine': {1: pool}, 'none': None}
    monkeypatch.setattr(torch, 'compile', lambda module, **_: graph)
    model = RoMaV2.from_random(setting='turbo', H_lr=LR[0], W_lr=LR[1])
    compile_model(model, 'reduce-overhead')
    first = model.compiled_parts['f'](torch.ones(3))
    second = model.compiled_parts['f'](torch.full((3,), 5.0))
    assert steps == [1, 1] and first['none'] is None
    assert torch.equal(first['taps'][0], torch.full((3,), 2.0))  # not overwritten
    assert torch.equal(first['fine'][1], torch.full((3,), 2.0))
    assert torch.equal(second['taps'][0], torch.full((3,), 10.0))


def test_compile_off_and_bad_modes(models):
    model = compile_model(models['fp32'], 'default', backend='aot_eager')
    assert compile_model(model, 'off').compiled_parts == {} and model.cfg.compile == 'off'
    with pytest.raises(ValueError, match='compile mode'):
        compile_model(model, 'fast')
    with pytest.raises(ValueError, match='compile='):
        RoMaV2Config(compile='yes')


def test_from_random_applies_the_config_field():
    model = RoMaV2.from_random(setting='turbo', compile='max-autotune')
    assert model.cfg.compile == 'max-autotune'
    assert set(model.compiled_parts) == set(COMPILED_PARTS)
    assert model.cfg.with_setting('base').compile == 'max-autotune'  # kept across presets


def test_refiner_compiles_with_inductor():
    """Inductor's code generation (C++ on the CPU) for a refiner: its autocast region, the
    BatchNorm fold outside autocast and the constant cache bypassed while tracing. The smallest
    refiner ("1", no local correlation) keeps the compile time affordable."""
    from test_refiner import _features, _randomise, _warp_and_confidence
    from romav2_core.refiner import REFINER_SPECS, ConvRefiner, displacement_scale_factor
    refiner = _randomise(ConvRefiner(REFINER_SPECS[1])).requires_grad_(False)
    f_A, f_B = _features(1, 16, 24, seed=1)[1], _features(1, 16, 24, seed=2)[1]
    warp, confidence = _warp_and_confidence(1, 16, 24, 4, seed=3)
    args = (f_A, f_B, warp, confidence, displacement_scale_factor(16, 24))
    compiled = torch.compile(refiner, fullgraph=True, dynamic=False)
    for amp in (None, torch.bfloat16):
        with torch.inference_mode():
            exact = refiner(*args)
            want = refiner(*args, amp_dtype=amp)
            got = compiled(*args, amp_dtype=amp)
        for g, w, e in zip(got, want, exact):
            if amp is None:
                _assert_close(g, w, FP32_TOL)
            else:  # inductor keeps fused bf16 intermediates in fp32: no less accurate
                assert _scaled_error(g, e) <= BF16_ERROR_FACTOR * _scaled_error(w, e)


@pytest.mark.gpu
def test_compiled_model_on_cuda():
    """Inductor + CUDA graphs (``reduce-overhead``) on the GPU, the official bf16 policy, the
    sequential mode's calls (one compile, to fit gpu_check.sh's budget): cached features stay
    valid across CUDA-graph replays, the result is within the bf16 policy's own error of the
    all-fp32 eager model, no graph break."""
    images = [i.cuda() for i in _images(7)]
    model = _model('bf16').cuda()
    fp32 = _model('fp32', model.state_dict()).cuda()
    exact = fp32.match_features(fp32.encode(images[0]), fp32.encode(images[1]))['warp_AB']
    eager = model.match_features(model.encode(images[0]), model.encode(images[1]))['warp_AB']
    compile_model(model, 'reduce-overhead')
    warm_up(model, stream=True)
    prev = model.encode(images[1])
    model.encode(images[0] * 0.5)  # a CUDA graph replay that must not clobber prev
    got = model.match_features(model.encode(images[0]), prev)['warp_AB']
    assert _scaled_error(got, exact) <= BF16_ERROR_FACTOR * max(_scaled_error(eager, exact),
                                                                1e-3)
    assert graph_break_count() == 0
