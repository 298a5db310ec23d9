"""DPTHead: checkpoint key layout, and agreement with the official romav2 2.0.1 head."""
import contextlib
import math
from unittest import mock

import pytest
import torch
from torch import nn

from checkpoint_keys import checkpoint_entries, state_dict_from_rows
from official_oracle import import_official
from romav2_core.dpt import DPTHead

PREFIX = 'matcher.head.'


def official_head() -> nn.Module:
    """The official head, constructed with the arguments of ``romav2.matcher.Matcher``."""
    from romav2.dpt import DPTHead as OfficialDPTHead
    return OfficialDPTHead(dim_in=1024, out_dim=3, pos_embed=False, feature_only=False,
                           down_ratio=4)


def randomize_(module: nn.Module, seed: int = 0) -> None:
    """He-normal conv weights, non-trivial biases and LayerNorm affine.

    The default init shrinks activations through the ~15 conv layers until the output is
    nearly constant, which would hide most errors; He init keeps the variance roughly stable.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.LayerNorm):
                layer.weight.copy_(1 + 0.2 * torch.randn(layer.weight.shape, generator=gen))
                layer.bias.copy_(0.2 * torch.randn(layer.bias.shape, generator=gen))
            elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                w = layer.weight
                # ConvTranspose2d stores (C_in, C_out, k, k) and here has kernel = stride (no
                # overlap), so each output pixel sees C_in inputs.
                fan_in = w.shape[0] if isinstance(layer, nn.ConvTranspose2d) else w[0].numel()
                w.copy_(torch.randn(w.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if layer.bias is not None:
                    layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))


@contextlib.contextmanager
def no_autocast():
    """Make the official head's hard-coded ``torch.autocast`` a no-op (all-fp32 reference)."""
    with mock.patch.object(torch, 'autocast', lambda *a, **k: contextlib.nullcontext()):
        yield


@pytest.fixture(scope='module')
def heads():
    import_official()
    ours = DPTHead().eval()
    randomize_(ours)
    official = official_head().eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    return ours, official


@pytest.fixture(scope='module')
def tokens():
    gen = torch.Generator().manual_seed(1)
    # B=2, h=4, w=6 tokens: non-square; w halves to 3 at the stride-2 level, so the
    # fusion path also meets an odd size.
    return [torch.randn(2, 4, 6, 1024, generator=gen) for _ in range(2)]


def test_state_dict_matches_checkpoint_keys():
    ours = DPTHead()
    expected = checkpoint_entries(PREFIX)
    assert expected, 'no matcher.head.* rows in the key table'
    assert {k: (tuple(v.shape), v.dtype) for k, v in ours.state_dict().items()} == expected
    ours.load_state_dict(state_dict_from_rows(PREFIX), strict=True)


def test_state_dict_names_match_official(heads):
    ours, official = heads
    assert list(ours.state_dict()) == list(official.state_dict())


@pytest.fixture(scope='module')
def ours_fp32(heads, tokens):
    with torch.no_grad():
        return heads[0](tokens, amp_dtype=None)


def test_fp32_matches_official(heads, tokens, ours_fp32):
    got = ours_fp32
    with torch.no_grad(), no_autocast():
        ref = heads[1](list(tokens))
    assert got.shape == (2, 16, 24, 3) and got.dtype == torch.float32
    assert got.std(dim=(0, 1, 2)).min() > 0.1, 'outputs nearly constant: weak test'
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bf16_policy_matches_official(heads, tokens, ours_fp32):
    """Same op sequence under the same autocast: expected to be bit-exact."""
    ours, official = heads
    with torch.no_grad():
        got = ours(tokens, amp_dtype=torch.bfloat16)
        ref = official(list(tokens))
    assert got.dtype == torch.float32
    # bf16 really was used (otherwise this test would just repeat the fp32 one).
    assert (got - ours_fp32).abs().max() > 1e-3
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize('hw', [(4, 6), (1, 3)], ids=['4x6', '1x3'])
def test_bf16_policy_matches_official_batch_one(heads, hw):
    """B=1, where a size-1 batch dim lets the BCHW view of the normalised tokens take
    different strides: ours must hand the projections the official layout, or a different
    1x1-conv kernel runs and bf16 rounding differs. Inputs are strided slices of a token
    sequence with prefix tokens, as DINOv3 taps arrive in the pipeline."""
    ours, official = heads
    h, w = hw
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randn(1, 5 + h * w, 1024, generator=gen) for _ in range(2)]
    tokens = [s[:, 5:].reshape(1, h, w, 1024) for s in seqs]
    with torch.no_grad():
        got = ours(tokens, amp_dtype=torch.bfloat16)
        ref = official(list(tokens))
        fp32 = ours(tokens, amp_dtype=None)
    assert got.shape == (1, 4 * h, 4 * w, 3)
    assert (got - fp32).abs().max() > 1e-3  # bf16 really was used
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
