"""Refiners: checkpoint key layout, and each ConvRefiner and the whole cascade (LR and HR pass)
against the official romav2 2.0.1 refiners with the same random weights."""
import pytest
import torch

from romav2_core.refiner import STRIDES, ConvRefiner, Refiners, displacement_scale_factor
from checkpoint_keys import checkpoint_entries, state_dict_from_rows
from official_oracle import import_official

FEAT_DIMS = {4: 256, 2: 128, 1: 64}


def _randomise(module, seed=0):
    """Seeded weights that keep activations O(1) through the 9 blocks (He-scaled convs), with
    non-trivial BN affine and running statistics and heads scaled so outputs vary clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith('bias'):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif '.norm.' in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                gain = {'warp_head': 4.0, 'confidence_head': 1.0, 'conv_pointwise': 1.0}.get(
                    name.split('.')[-2], 2.0 ** 0.5)
                p.copy_(gain / fan_in ** 0.5 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith('running_var'):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return module.eval()


def _official_refiners(ours, amp):
    """The official ModuleDict with our weights (strict by name); ``amp=False``: all fp32."""
    romav2 = import_official()
    official = romav2.refiner.Refiners(romav2.refiner.Refiners.Cfg())
    official.load_state_dict(ours.state_dict(), strict=True)
    for m in official.modules():
        if isinstance(m, romav2.refiner.Block):
            m.enable_amp = amp  # each Block's own autocast(enabled=...) switch
    return official.eval()


@pytest.fixture(scope='module')
def refiners():
    return _randomise(Refiners())


def _features(B, H, W, seed):
    """VGG-like BHWC feature dicts {4, 2, 1} for an H x W image (ReLU outputs)."""
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(B, H // s, W // s, FEAT_DIMS[s], generator=g).relu() for s in STRIDES}


def _warp_and_confidence(B, h, w, channels, seed):
    """A warp near identity with some pixels pointing outside B, and a confidence."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1)
    warp = grid + 0.3 * torch.randn(B, h, w, 2, generator=g)
    confidence = torch.randn(B, h, w, channels, generator=g)
    if channels == 4:
        confidence[..., 1:] = confidence[..., 1:].abs() * 5  # an accumulated precision
    return warp, confidence


def _official_stage(official, feats_A, feats_B, warp, confidence, H, W, hr_pass):
    """One refinement stage exactly as ``RoMaV2.forward`` runs it (direction A -> B)."""
    romav2 = import_official()
    interpolate = romav2.romav2._interpolate_warp_and_confidence
    scale_factor = torch.tensor((W / 512, H / 512))
    confidence = confidence.clone()  # the official zeroes precision in place
    outputs = {}
    for key, refiner in official.items():
        s = int(key)
        warp, confidence = interpolate(warp=warp, confidence=confidence, H=H, W=W, patch_size=s,
                                       zero_out_precision=hr_pass and s == 4)
        out = refiner(f_A=feats_A[s], f_B=feats_B[s], prev_warp=warp,
                      prev_confidence=confidence, scale_factor=scale_factor)
        warp, confidence = out['warp'], out['confidence']
        outputs[s] = (warp, confidence)
    return outputs


def test_state_dict_matches_checkpoint_keys():
    rows = checkpoint_entries('refiners.')
    assert len(rows) > 0
    model = Refiners()
    ours = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert ours == rows
    state = state_dict_from_rows('refiners.', fill='random')
    model.load_state_dict(state, strict=True)
    assert torch.equal(model['4'].proj.weight, state['4.proj.weight'])


# Sizes: a 32 x 48 image (stride-4 grid 8 x 12), B = 2.
H_IMG, W_IMG, BATCH = 32, 48, 2


@pytest.mark.parametrize('stride', STRIDES)
@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16'])
def test_conv_refiner_matches_official(refiners, stride, amp):
    official = _official_refiners(refiners, amp)[str(stride)]
    ours = refiners[str(stride)]
    feats_A, feats_B = _features(BATCH, H_IMG, W_IMG, 1), _features(BATCH, H_IMG, W_IMG, 2)
    h, w = H_IMG // stride, W_IMG // stride
    warp, confidence = _warp_and_confidence(BATCH, h, w, 4, seed=3)
    scale = displacement_scale_factor(H_IMG, W_IMG)
    inputs = (warp.clone(), confidence.clone())
    with torch.no_grad():
        expected = official(f_A=feats_A[stride], f_B=feats_B[stride], prev_warp=warp,
                            prev_confidence=confidence, scale_factor=scale)
        got_warp, got_conf = ours(feats_A[stride], feats_B[stride], warp, confidence, scale,
                                  amp_dtype=torch.bfloat16 if amp else None,
                                  local_corr_impl='torch')
    assert torch.equal(warp, inputs[0]) and torch.equal(confidence, inputs[1])
    # The outputs must vary, or the comparison would be weak.
    assert (got_warp - warp).std() > 1e-3 and got_conf.std(dim=(0, 1, 2)).min() > 0.1
    _assert_close(got_warp, got_conf, expected['warp'], expected['confidence'], amp)


def _assert_close(warp, conf, exp_warp, exp_conf, amp):
    if not amp:
        # Same ops in fp32 but for the correlation's channel summation order and the
        # BatchNorm folded into the depthwise conv (conv_bn.py), so agreement to the fp32 noise
        # level, relative to each tensor's scale (accumulated precisions reach O(100), and a
        # small off-diagonal entry carries the rounding of its large factors).
        torch.testing.assert_close(warp, exp_warp, rtol=0, atol=1e-5)
        scale = max(1.0, float(exp_conf.abs().max()))
        torch.testing.assert_close(conf, exp_conf, rtol=1e-5, atol=1e-5 * scale)
    else:
        # bf16 blocks: a ~1e-7 fp32 difference in the correlation can flip the bf16 rounding of
        # a block input (relative step 2^-8), which 9 blocks propagate; allow a few bf16 ulps.
        torch.testing.assert_close(warp, exp_warp, rtol=0, atol=2e-3)
        torch.testing.assert_close(conf, exp_conf, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16'])
def test_cascade_matches_official_lr_stage(refiners, amp):
    official = _official_refiners(refiners, amp)
    feats_A, feats_B = _features(BATCH, H_IMG, W_IMG, 4), _features(BATCH, H_IMG, W_IMG, 5)
    # The matcher's output: stride-4 warp and a 1-channel overlap logit.
    warp, confidence = _warp_and_confidence(BATCH, H_IMG // 4, W_IMG // 4, 1, seed=6)
    kept = (warp.clone(), confidence.clone())
    with torch.no_grad():
        expected = _official_stage(official, feats_A, feats_B, warp, confidence, H_IMG, W_IMG,
                                   hr_pass=False)
        got = refiners(feats_A, feats_B, warp, confidence,
                       displacement_scale_factor(H_IMG, W_IMG),
                       amp_dtype=torch.bfloat16 if amp else None, local_corr_impl='torch')
    assert torch.equal(warp, kept[0]) and torch.equal(confidence, kept[1])
    assert list(got) == list(STRIDES)
    for s in STRIDES:
        assert got[s][0].shape == (BATCH, H_IMG // s, W_IMG // s, 2)
        assert got[s][1].shape == (BATCH, H_IMG // s, W_IMG // s, 4)
        _assert_close(*got[s], *expected[s], amp)


def test_cascade_matches_official_hr_stage(refiners):
    # HR pass: LR result (8 x 12 grid, 4 channels) refined on a 48 x 64 image (stride 4:
    # 12 x 16); the precision is dropped before refiner "4", the caller's tensor is untouched.
    official = _official_refiners(refiners, amp=False)
    H_hr, W_hr = 48, 64
    feats_A, feats_B = _features(1, H_hr, W_hr, 7), _features(1, H_hr, W_hr, 8)
    warp, confidence = _warp_and_confidence(1, 8, 12, 4, seed=9)
    kept = confidence.clone()
    with torch.no_grad():
        expected = _official_stage(official, feats_A, feats_B, warp, confidence, H_hr, W_hr,
                                   hr_pass=True)
        got = refiners(feats_A, feats_B, warp, confidence, displacement_scale_factor(H_hr, W_hr),
                       hr_pass=True, local_corr_impl='torch')
        not_hr = refiners(feats_A, feats_B, warp, confidence,
                          displacement_scale_factor(H_hr, W_hr), local_corr_impl='torch')
    assert torch.equal(confidence, kept)
    for s in STRIDES:
        _assert_close(*got[s], *expected[s], amp=False)
    # The flag matters: without it the LR precision is carried into the HR pass.
    assert (not_hr[4][1][..., 1:] - got[4][1][..., 1:]).abs().min() > 0


def test_autocast_of_the_caller_does_not_leak(refiners):
    # amp_dtype=None means fp32 even inside a caller's autocast region.
    ours = refiners['2']
    feats_A, feats_B = _features(1, 16, 16, 10), _features(1, 16, 16, 11)
    warp, confidence = _warp_and_confidence(1, 8, 8, 4, seed=12)
    scale = displacement_scale_factor(16, 16)
    with torch.no_grad():
        plain = ours(feats_A[2], feats_B[2], warp, confidence, scale, local_corr_impl='torch')
        with torch.autocast('cpu', dtype=torch.bfloat16):
            inside = ours(feats_A[2], feats_B[2], warp, confidence, scale,
                          local_corr_impl='torch')
    assert torch.equal(plain[0], inside[0]) and torch.equal(plain[1], inside[1])
