"""RoMaV2's public API: feature cache, batching, settings, sampling, weights, side effects."""
from __future__ import annotations

import copy
import subprocess
import sys
import types
import urllib.error
import warnings
from unittest import mock

import pytest
import torch

from official_oracle import import_official
from random_weights import spread_state_dict
from romav2_core import weights as weights_io
from romav2_core.config import SETTINGS, RoMaV2Config
from romav2_core.dinov3 import DINOv3ViTL16
from romav2_core.model import RoMaV2

LR = (64, 96)


@pytest.fixture(scope='module')
def model():
    """All-fp32 (deterministic on the CPU), small working resolution, spread weights."""
    m = RoMaV2.from_random(seed=5, setting='turbo', dtype=torch.float32, H_lr=LR[0], W_lr=LR[1])
    m.load_state_dict(spread_state_dict(m.state_dict(), seed=5))
    return m


def _frames(n, seed=0, size=(70, 110)):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, *size, generator=g) for _ in range(n)]


def test_cached_features_match_fresh_encoding_exactly(model):
    """A sequential stream encodes each frame once; reusing a frame's features for two pairs
    gives exactly what encoding it again gives."""
    f0, f1, f2 = _frames(3)
    cache = [model.encode(f) for f in (f0, f1, f2)]
    for (a, b) in ((1, 0), (2, 1)):
        cached = model.match_features(cache[a], cache[b])
        fresh = model.match_features(model.encode((f0, f1, f2)[a]),
                                     model.encode((f0, f1, f2)[b]))
        for key in ('warp_AB', 'overlap_AB', 'precision_AB', 'covariance_AB'):
            assert torch.equal(cached[key], fresh[key]), key


def test_batched_encoding_equals_separate(model):
    """``match`` runs A and B through the encoders as one batch. In fp32 on the CPU the batch
    composition only changes GEMM blocking: equal to 1e-5 (bit-identical in practice)."""
    a, b = _frames(2, seed=1)
    joint = model.match(a, b)
    separate = model.match_features(model.encode(a), model.encode(b))
    for key in ('warp_AB', 'overlap_AB'):
        torch.testing.assert_close(joint[key], separate[key], atol=1e-5, rtol=1e-5)


def test_batch_pair_false_encodes_one_image_at_a_time(model):
    """``batch_pair=False`` (the official's per-image encoding, for bf16 parity with it) takes
    exactly the separate-encoding path."""
    a, b = _frames(2, seed=1)
    separate = model.match_features(model.encode(a), model.encode(b))
    model.cfg = model.cfg.replace(batch_pair=False)
    try:
        out = model.match(a, b)
    finally:
        model.cfg = model.cfg.replace(batch_pair=True)
    for key in ('warp_AB', 'overlap_AB', 'precision_AB'):
        assert torch.equal(out[key], separate[key]), key


def test_channels_last_changes_layout_not_results(model):
    """The DPT, VGG and refiner convs run channels-last by default; the official layout gives
    the same outputs up to summation order (fp32: 1e-5)."""
    conv = model.refiner_features.layers[3].weight  # [64 x 64 x 3 x 3]: the layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    official_layout = copy.deepcopy(model)
    official_layout.set_conv_memory_format(torch.contiguous_format)
    assert official_layout.refiner_features.layers[3].weight.is_contiguous()
    a, b = _frames(2, seed=2)
    ours, ref = model.match(a, b), official_layout.match(a, b)
    for key in ('warp_AB', 'overlap_AB', 'precision_AB'):
        torch.testing.assert_close(ours[key], ref[key], atol=1e-5, rtol=1e-5)


def test_batch_elements_are_independent(model):
    a, b = _frames(2, seed=2)
    c, d = _frames(2, seed=3)
    both = model.match(torch.cat((a, c)), torch.cat((b, d)))
    single = model.match(c, d)
    torch.testing.assert_close(both['warp_AB'][1:], single['warp_AB'], atol=1e-5, rtol=1e-5)


def test_outputs_shapes_units_and_covariance(model):
    a, b = _frames(2, seed=4)
    model.bidirectional = True
    try:
        out = model.match(a, b)
    finally:
        model.bidirectional = False
    H, W = model.output_hw
    for d in ('AB', 'BA'):
        assert out[f'warp_{d}'].shape == (1, H, W, 2)
        assert out[f'overlap_{d}'].shape == (1, H, W, 1)
        assert out[f'precision_{d}'].shape == (1, H, W, 2, 2)
        overlap = out[f'overlap_{d}']
        assert overlap.min() >= 0 and overlap.max() <= 1
        cov = out[f'covariance_{d}']
        torch.testing.assert_close(cov, cov.transpose(-1, -2))
        assert (torch.linalg.eigvalsh(cov) > 0).all()  # Cholesky-parametrised: always SPD
        eye = torch.eye(2).expand_as(cov)
        torch.testing.assert_close(cov @ out[f'precision_{d}'], eye, atol=1e-4, rtol=1e-4)


def test_sample_per_batch_both_directions(model):
    a, b = _frames(2, seed=6)
    model.bidirectional = True
    try:
        out = model.match(torch.cat((a, b)), torch.cat((b, a)))
    finally:
        model.bidirectional = False
    g = torch.Generator().manual_seed(0)
    samples = model.sample(out, 50, generator=g)
    assert len(samples) == 2
    for s in samples:
        assert s['matches'].shape == (50, 4)
        assert s['certainty'].shape == (50,)
        for side in ('precision_A', 'precision_B'):
            p = s[side]
            assert p.shape == (50, 2, 2)  # 2x2 matrices, not the official's rows
            torch.testing.assert_close(p, p.transpose(-1, -2))
        assert s['matches'].abs().max() <= 1 - 1 / model.output_hw[0] + 1e-6
    again = model.sample(out, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0]['matches'], samples[0]['matches'])


def test_sample_unidirectional_precision_is_the_dense_one(model):
    a, b = _frames(2, seed=7)
    out = model.match(a, b)
    s = model.sample(out, 40, generator=torch.Generator().manual_seed(1))[0]
    assert s['precision_A'] is None  # A-side points are exact grid centres
    H, W = model.output_hw
    # Recover each sample's grid index from its A coordinate (pixel centres).
    col = ((s['matches'][:, 0] + 1) / 2 * W - 0.5).round().long()
    row = ((s['matches'][:, 1] + 1) / 2 * H - 0.5).round().long()
    torch.testing.assert_close(s['precision_B'], out['precision_AB'][0, row, col])
    torch.testing.assert_close(s['matches'][:, 2:], out['warp_AB'][0, row, col])


def test_settings_match_the_official_table():
    romav2 = import_official()
    for name, expected in SETTINGS.items():
        probe = types.SimpleNamespace()
        romav2.RoMaV2.apply_setting(probe, name)
        for key, value in expected.items():
            assert getattr(probe, key) == value, (name, key)


def test_attribute_style_settings(model):
    cfg = model.cfg
    try:
        model.apply_setting('fast')
        assert (model.H_lr, model.W_lr, model.bidirectional) == (512, 512, False)
        assert model.cfg.all_fp32() == model.cfg  # precision policy kept across presets
        model.H_lr = 480
        assert model.cfg.H_lr == 480 and model.output_hw == (480, 512)
        with pytest.raises(ValueError, match='multiple of 16'):
            model.W_lr = 100
        model.H_hr = 960  # one at a time, as the official attributes allow...
        with pytest.raises(ValueError, match='set both'):
            _ = model.output_hw  # ...but a run needs both
        model.W_hr = 1024
        assert model.output_hw == (960, 1024)
    finally:
        model.cfg = cfg


def test_tf32_warns_instead_of_raising(model):
    a, b = _frames(2, seed=8, size=LR)
    before = torch.get_float32_matmul_precision()
    model._warned_tf32 = False
    torch.set_float32_matmul_precision('high')
    try:
        with pytest.warns(RuntimeWarning, match='TF32'):
            model.match(a, b)
    finally:
        torch.set_float32_matmul_precision(before)


def test_to_pixel_coordinates_conventions(model):
    m = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    a_off, b_off = model.to_pixel_coordinates(m, 10, 20, 30, 40)  # official: centres at +0.5
    a_cv, b_cv = model.to_pixel_coordinates(m, 10, 20, 30, 40, convention='opencv')
    torch.testing.assert_close(a_off, torch.tensor([[0.0, 0.0], [10.0, 5.0]]))
    torch.testing.assert_close(b_off, torch.tensor([[40.0, 30.0], [20.0, 15.0]]))
    torch.testing.assert_close(a_cv, a_off - 0.5)
    torch.testing.assert_close(b_cv, b_off - 0.5)


def test_no_global_side_effects_on_import():
    """Importing the core changes no torch/dynamo/logging setting (the official package sets
    dynamo options globally and installs a log handler)."""
    code = '''
import logging, torch, torch._dynamo
def state():
    c = torch._dynamo.config
    return (torch.get_float32_matmul_precision(), c.automatic_dynamic_shapes,
            c.accumulated_cache_size_limit, torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype(),
            len(logging.getLogger().handlers), torch.get_num_threads())
before = state()
import romav2_core.model, romav2_core.sampling, romav2_core.local_correlation  # noqa
from romav2_core.dinov3 import DINOv3ViTL16
forward = DINOv3ViTL16.forward
assert state() == before, (before, state())
print("ok")
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr


def test_no_class_level_monkeypatching(model):
    assert type(model.f).forward is DINOv3ViTL16.forward
    assert 'forward' not in vars(model.f)


def test_construction_never_downloads():
    with mock.patch.object(torch.hub, 'download_url_to_file',
                           side_effect=AssertionError('download attempted')), \
            mock.patch.object(torch.hub, 'load_state_dict_from_url',
                              side_effect=AssertionError('download attempted')):
        RoMaV2(RoMaV2Config.from_setting('turbo'))


def test_from_pretrained_offline_names_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with mock.patch.object(torch.hub, 'download_url_to_file',
                           side_effect=urllib.error.URLError('no network')):
        with pytest.raises(weights_io.WeightsError) as err:
            weights_io.resolve_weights(None)
    message = str(err.value)
    assert weights_io.OFFICIAL_URL in message
    assert str(tmp_path / 'hub' / 'checkpoints' / 'romav2.0.1.pt') in message
    with pytest.raises(weights_io.WeightsError, match='does not exist'):
        RoMaV2.from_pretrained(weights=str(tmp_path / 'missing.pt'), setting='turbo')


@pytest.mark.slow
def test_from_pretrained_loads_a_checkpoint_file_strictly(model, tmp_path):
    """A checkpoint saved as a flat state dict (the official format) loads with all 907
    keys; the cache path is used when no path is given."""
    source = RoMaV2.from_random(seed=9, setting='turbo')
    path = tmp_path / 'romav2.0.1.pt'
    torch.save(source.state_dict(), path)
    loaded = RoMaV2.from_pretrained(weights=str(path), setting='turbo')
    assert len(loaded.state_dict()) == 907
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with mock.patch.object(weights_io, 'default_cache_path', return_value=path), \
            warnings.catch_warnings():
        assert weights_io.resolve_weights(None) == path


def test_uint8_images_equal_their_float_version(model):
    """uint8 input (what a camera gives) is converted on the model's device to exactly the
    float /255 image; other integer dtypes are refused."""
    g = torch.Generator().manual_seed(12)
    a, b = (torch.randint(0, 256, (1, 3, 70, 110), generator=g, dtype=torch.uint8)
            for _ in range(2))
    as_uint8 = model.match(a, b)
    as_float = model.match(a.float() / 255, b.float() / 255)
    for key in ('warp_AB', 'overlap_AB', 'precision_AB'):
        assert torch.equal(as_uint8[key], as_float[key]), key
    with pytest.raises(TypeError, match='uint8 or floating point'):
        model.encode(a.to(torch.int32))


def test_warm_forward_rebuilds_no_constant(model, monkeypatch):
    """Grids, window offsets and scale vectors are built once per size and device: a second
    forward creates no tensor from Python values (each would be a host-to-device copy on a GPU)
    and no linspace/arange grid."""
    a, b = _frames(2, seed=13)
    model.bidirectional = True
    try:
        first = model.match(a, b)
        made = []
        for name in ('tensor', 'linspace', 'arange', 'meshgrid'):
            real = getattr(torch, name)

            def counting(*args, _real=real, _name=name, **kwargs):
                made.append(_name)
                return _real(*args, **kwargs)
            monkeypatch.setattr(torch, name, counting)
        second = model.match(a, b)
    finally:
        model.bidirectional = False
    assert made == [], made
    assert torch.equal(first['warp_AB'], second['warp_AB'])


def test_size_constants_are_the_geometry_grid():
    from romav2_core.constants import pixel_grid, size_constant
    from romav2_core.geometry import normalized_grid
    grid = pixel_grid(3, 5, 7)
    assert torch.equal(grid, normalized_grid(3, 5, 7))
    assert pixel_grid(1, 5, 7).data_ptr() == grid.data_ptr()  # one tensor, expanded per batch
    built = []
    value = size_constant('probe', lambda: built.append(1) or torch.ones(2), 'key')
    assert size_constant('probe', lambda: built.append(1) or torch.ones(2), 'key') is value
    assert built == [1] and not value.is_inference()
    with torch.inference_mode():  # made outside inference mode even when asked inside it
        assert not size_constant('probe', lambda: torch.ones(2), 'other key').is_inference()


def test_package_exports_the_official_names():
    import romav2_core
    from romav2_core import ImageFeatures as Features, RoMaV2 as Model, RoMaV2Config as Config
    assert Model is RoMaV2 and Config is RoMaV2Config
    assert Features.__module__ == 'romav2_core.model'
    assert {'RoMaV2', 'RoMaV2Config', 'ImageFeatures'} <= set(dir(romav2_core))
    with pytest.raises(AttributeError):
        romav2_core.NotAName  # noqa: B018


def test_cpu_batches_run_one_pair_at_a_time(model):
    """``cpu_max_pairs`` (1 by default) runs a batch pair by pair on the CPU: each pair's
    result is exactly the one it gets alone, and equals one big batch to fp32 summation order
    (1e-5); every entry point (match, forward, encode, match_features) splits and rejoins."""
    g = torch.Generator().manual_seed(14)
    a, b = (torch.rand(3, 3, 70, 110, generator=g) for _ in range(2))
    assert model.cfg.cpu_max_pairs == 1
    chunked = model.match(a, b)
    alone = model.match(a[2:], b[2:])
    for key in ('warp_AB', 'overlap_AB', 'precision_AB'):
        assert torch.equal(chunked[key][2:], alone[key]), key
    lr = [torch.nn.functional.interpolate(x, size=LR, mode='bilinear') for x in (a, b)]
    preds = model(*lr)
    feats = model.encode(torch.cat((a, b)))
    cached = model.match_features(feats[:3], feats[3:])
    model.cfg = model.cfg.replace(cpu_max_pairs=0)
    try:
        whole, whole_preds = model.match(a, b), model(*lr)
        whole_feats = model.encode(torch.cat((a, b)))
    finally:
        model.cfg = model.cfg.replace(cpu_max_pairs=1)
    for key in ('warp_AB', 'overlap_AB', 'precision_AB'):
        torch.testing.assert_close(chunked[key], whole[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached[key], whole[key], atol=1e-5, rtol=1e-5)
    assert preds.keys() == whole_preds.keys() and preds['warp_BA'] is None
    torch.testing.assert_close(preds['matcher']['attn_logits_AB'],
                               whole_preds['matcher']['attn_logits_AB'], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(preds['refiner_1_AB']['warp'], whole_preds['refiner_1_AB']['warp'],
                               atol=1e-5, rtol=1e-5)
    assert feats.batch_size == 6 and feats.fine_hr is None
    for got, want in zip(feats.coarse + list(feats.fine.values()),
                         whole_feats.coarse + list(whole_feats.fine.values())):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='cpu_max_pairs'):
        RoMaV2Config(cpu_max_pairs=-1)
