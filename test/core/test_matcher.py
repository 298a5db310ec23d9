"""Coarse matcher vs the official ``romav2.matcher.Matcher`` with the same random weights.

Two precision modes, each bidirectional, on small token grids (4 x 6 tokens):
* the official policy (bf16 autocast around the mv-ViT and the DPT head, mv RoPE in bf16,
  bf16 DINOv3 taps as on CPU);
* all-fp32 (official ``enable_amp=False`` with ``torch.autocast`` patched to a no-op, since its
  DPT hard-codes autocast; the mv RoPE stays bf16 on both sides, as in the official).
Intermediates (mv-ViT output, attention logits, the DPT input carrying the match embedding) are
compared as well as the final warp/overlap.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from romav2_core.matcher import CoarseMatcher
from romav2_core.rope import RopeEmbedding
from checkpoint_keys import checkpoint_entries, state_dict_from_rows
from official_oracle import import_official
from random_weights import randomize_transformer_

B, H, W, DIM = 1, 4, 6, 1024


@pytest.fixture(scope='module')
def official():
    """The official Matcher with random weights scaled so every stage matters (default init
    makes the DPT output nearly constant)."""
    import_official()
    from romav2.matcher import Matcher
    torch.manual_seed(0)
    return randomize_transformer_(Matcher(Matcher.Cfg()).eval(), seed=1)


@pytest.fixture(scope='module')
def ours(official):
    model = CoarseMatcher().eval()
    model.load_state_dict(official.state_dict(), strict=True)
    return model


@pytest.fixture(scope='module')
def feats():
    """DINOv3-like taps for A, and for B a row-shuffled noisy copy (so attention has structure)."""
    g = torch.Generator().manual_seed(2)
    feats_A = [torch.randn(B, H, W, DIM, generator=g) for _ in range(2)]
    rows = torch.randperm(H, generator=g)
    feats_B = [f[:, rows] + 0.5 * torch.randn(B, H, W, DIM, generator=g) for f in feats_A]
    return feats_A, feats_B


def _run_official(official, feats_A, feats_B, amp: bool) -> dict:
    """Official bidirectional forward; also captures the mv-ViT output and the DPT inputs."""
    captured = {'head_inputs': []}
    hooks = [
        official.mv_vit.register_forward_hook(
            lambda m, i, o: captured.__setitem__('mv', o['x_norm_patchtokens'])),
        official.head.register_forward_pre_hook(
            lambda m, args, kwargs: captured['head_inputs'].append(list(args[0])),
            with_kwargs=True),
    ]
    object.__setattr__(official.cfg, 'enable_amp', amp)  # a frozen dataclass; flag read per call
    no_autocast = mock.patch('torch.autocast', lambda *a, **k: contextlib.nullcontext())
    try:
        with torch.no_grad(), (contextlib.nullcontext() if amp else no_autocast):
            # Copies: the official writes the DPT input into the caller's feature lists.
            out = official(list(feats_A), list(feats_B), None, None, bidirectional=True)
    finally:
        for h in hooks:
            h.remove()
        object.__setattr__(official.cfg, 'enable_amp', True)
    out.update(captured)
    return out


@pytest.fixture(scope='module')
def policy_run(official, ours, feats):
    """Both sides under the official precision policy, with bf16 taps as DINOv3 gives on CPU."""
    feats_A, feats_B = ([f.bfloat16() for f in fs] for fs in feats)
    ref = _run_official(official, feats_A, feats_B, amp=True)
    with torch.no_grad():
        got = ours(feats_A, feats_B, bidirectional=True, amp_dtype=torch.bfloat16,
                   head_amp_dtype=torch.bfloat16, rope_bf16=True)
    return ref, got, (feats_A, feats_B)


@pytest.fixture(scope='module')
def fp32_run(official, ours, feats):
    feats_A, feats_B = feats
    ref = _run_official(official, feats_A, feats_B, amp=False)
    with torch.no_grad():
        got = ours(feats_A, feats_B, bidirectional=True, amp_dtype=None, head_amp_dtype=None,
                   rope_bf16=True)
    return ref, got, feats


def test_state_dict_is_the_checkpoint_layout():
    with torch.device('meta'):
        model = CoarseMatcher()
    expected = checkpoint_entries('matcher.')
    got = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert got == expected
    sd = state_dict_from_rows('matcher.', fill='empty', device='meta')
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_buffers_match_the_official_construction(official):
    """Same RoPE periods (bf16, bit-exact) and the scalar buffers' dtypes/values."""
    ours = CoarseMatcher()
    assert torch.equal(ours.mv_vit.rope_embed.periods, official.mv_vit.rope_embed.periods)
    assert ours.scale.dtype == torch.int64 and ours.scale.item() == 1
    assert ours.temp.dtype == torch.float32 and ours.temp.item() == pytest.approx(0.1)


def test_mv_rope_tables_match_the_official(official):
    """bf16 tables (coordinates, angles, sin/cos all rounded to bf16) bit-identical."""
    rope = RopeEmbedding(64, buffer_dtype=torch.bfloat16)
    for h, w in ((H, W), (40, 40), (50, 50)):
        sin_o, cos_o = official.mv_vit.rope_embed(H=h, W=w)
        sin_u, cos_u = rope(h, w, dtype=torch.bfloat16)
        assert sin_u.dtype == torch.bfloat16
        assert torch.equal(sin_u, sin_o) and torch.equal(cos_u, cos_o)


# bf16 autocast on CPU is slow (~20 s per side at this size on 2 shared cores).
@pytest.mark.parametrize('run', [pytest.param('policy_run', marks=pytest.mark.slow), 'fp32_run'])
def test_intermediates_bit_exact(run, request):
    """mv-ViT output, attention logits and the DPT input (f17 + mv + match embedding) run the
    same ops in the same order on the same device as the official: bit-identical, both modes."""
    ref, got, (feats_A, feats_B) = request.getfixturevalue(run)
    mv = ref['mv'].reshape(B, 2, H, W, DIM).float()
    assert torch.equal(got['mv_A'], mv[:, 0]) and torch.equal(got['mv_B'], mv[:, 1])
    for d in ('AB', 'BA'):
        expected = ref[f'attn_{d}_logits'].reshape(B, H * W, H * W)
        assert torch.equal(got[f'attn_logits_{d}'], expected)
    assert got['attn_logits_AB'].std() > 0.2  # not a flat attention: the check has teeth
    for (f11, f17), mv_X, emb, head_in in zip(
            (feats_A, feats_B), (got['mv_A'], got['mv_B']),
            (got['match_emb_AB'], got['match_emb_BA']), ref['head_inputs']):
        assert torch.equal(head_in[0], f11)
        assert torch.equal(head_in[1], f17 + mv_X + emb)


@pytest.mark.slow
def test_official_policy_outputs(policy_run):
    """End to end under bf16 autocast. Everything up to the DPT input is bit-exact (above), so
    differences come from the DPT head alone; a mirrored head is bit-exact, and 1e-4 (warp,
    normalised coords) / 1e-3 (overlap logit) leave room for a bf16 rounding flip in a conv."""
    ref, got, _ = policy_run
    for d in ('AB', 'BA'):
        assert got[f'warp_{d}'].shape == (B, 4 * H, 4 * W, 2)
        assert got[f'confidence_{d}'].shape == (B, 4 * H, 4 * W, 1)
        assert got[f'warp_{d}'].std() > 0.1  # far from constant
        torch.testing.assert_close(got[f'warp_{d}'], ref[f'warp_{d}'], rtol=0, atol=1e-4)
        torch.testing.assert_close(got[f'confidence_{d}'], ref[f'confidence_{d}'],
                                   rtol=0, atol=1e-3)


def test_fp32_outputs(fp32_run):
    """All-fp32 (mv RoPE bf16 on both sides). 1e-5: fp32 convolutions in the DPT may pick
    different algorithms/orders for different memory layouts (~4e-6 measured)."""
    ref, got, _ = fp32_run
    for d in ('AB', 'BA'):
        assert got[f'warp_{d}'].dtype == torch.float32
        torch.testing.assert_close(got[f'warp_{d}'], ref[f'warp_{d}'], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[f'confidence_{d}'], ref[f'confidence_{d}'],
                                   rtol=0, atol=1e-5)


def test_unidirectional_equals_bidirectional_and_inputs_untouched(ours, fp32_run):
    _, bidir, (feats_A, feats_B) = fp32_run
    before = [f.clone() for f in feats_A + feats_B]
    list_A, list_B = list(feats_A), list(feats_B)
    with torch.no_grad():
        uni = ours(list_A, list_B, bidirectional=False, rope_bf16=True)
    for key in ('warp_AB', 'confidence_AB', 'mv_A', 'mv_B', 'attn_logits_AB'):
        assert torch.equal(uni[key], bidir[key])
    assert uni['warp_BA'] is None and uni['confidence_BA'] is None
    assert all(a is b for a, b in zip(list_A + list_B, feats_A + feats_B))
    assert all(torch.equal(a, b) for a, b in zip(feats_A + feats_B, before))
