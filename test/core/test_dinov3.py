"""DINOv3 ViT-L/16 backbone: checkpoint layout, an independent oracle, and the official policy.

* Layout: the state_dict equals the checkpoint's ``f.*`` keys/shapes (dtypes after the official
  bf16 cast) and loads strictly.
* fp32 numerics vs Hugging Face ``transformers.DINOv3ViTModel`` (an independent implementation)
  with the same random weights.
* The official bf16 policy: our module injected as the official ``Descriptor``'s backbone
  (the official wrapper: bf16 weights, autocast, normalisation) vs our own bf16 forward.
"""
from __future__ import annotations

import contextlib
import copy
import sys
from unittest import mock

import pytest
import torch

from romav2_core.dinov3 import DINOv3ViTL16
from romav2_core.normalization import imagenet_normalize
from romav2_core.rope import RopeEmbedding
from romav2_core.vit import MaskedBiasLinear
from checkpoint_keys import checkpoint_entries, state_dict_from_rows
from official_oracle import import_official
from random_weights import randomize_transformer_

TAPS = (11, 17)
DIM = 1024


def randomize_(model: DINOv3ViTL16, seed: int = 0) -> DINOv3ViTL16:
    """Random weights (random_weights.randomize_transformer_); the k bias is random, so a
    forgotten q/k/v bias mask shows."""
    return randomize_transformer_(model, seed)


@pytest.fixture(scope='module')
def dino():
    torch.manual_seed(0)
    return randomize_(DINOv3ViTL16().eval())


@pytest.fixture(scope='module')
def images():
    return torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))


def test_state_dict_is_the_checkpoint_layout():
    expected = checkpoint_entries('f.')
    with torch.device('meta'):
        model = DINOv3ViTL16()
    got = {k: (tuple(v.shape), v.dtype) for k, v in model.to(torch.bfloat16).state_dict().items()}
    assert got == expected
    # A state dict with exactly the checkpoint's keys, shapes and dtypes loads strictly.
    sd = state_dict_from_rows('f.', fill='empty', device='meta')
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_buffers_hold_the_checkpoint_values():
    """RoPE periods are initialised bf16-rounded (as stored) and the qkv bias mask to q=1, k=0,
    v=1 (the trained values; the reference leaves NaN until init_weights)."""
    exact = 100.0 ** (torch.arange(16, dtype=torch.float64) / 16)
    periods = RopeEmbedding(64).periods
    assert torch.equal(periods, exact.to(torch.bfloat16).float())
    assert periods[0] == 1.0 and periods[-1] == 75.0  # 74.99 rounded to bf16
    mask = MaskedBiasLinear(8, 24).bias_mask
    assert torch.equal(mask, torch.tensor([1.0] * 8 + [0.0] * 8 + [1.0] * 8))


def test_rope_tables_match_the_official_definition():
    """Our fp32 tables from bf16 periods equal the official RopePositionEmbedding's after the
    official ``model.to(bfloat16)`` (periods rounded, tables still fp32)."""
    import_official()
    from romav2.vit.rope import RopePositionEmbedding
    official = RopePositionEmbedding(DIM, num_heads=16, base=100.0, dtype=torch.float32)
    official.periods.data = official.periods.to(torch.bfloat16)
    ours = RopeEmbedding(64)
    for H, W in ((3, 4), (40, 40), (5, 9)):
        sin_o, cos_o = official(H=H, W=W)
        sin_u, cos_u = ours(H, W, dtype=torch.float32)
        assert torch.equal(sin_u, sin_o) and torch.equal(cos_u, cos_o)


@contextlib.contextmanager
def _torchvision_shim_hidden():
    """The official oracle's torchvision shim has no ``__spec__``, which transformers'
    package probe (``importlib.util.find_spec``) rejects with a ValueError; hide it while
    transformers runs (torchvision itself is not installed, so transformers sees it absent)."""
    shim = {k: sys.modules.pop(k) for k in list(sys.modules)
            if k == 'torchvision' or k.startswith('torchvision.')}
    try:
        yield
    finally:
        sys.modules.update(shim)


def _hf_oracle(model: DINOv3ViTL16, depth: int):
    """``transformers.DINOv3ViTModel`` sharing ``model``'s first ``depth`` blocks' weights."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    cfg = DINOv3ViTConfig(
        hidden_size=DIM, num_hidden_layers=depth, num_attention_heads=16, intermediate_size=4096,
        patch_size=16, num_register_tokens=4, layer_norm_eps=1e-5, rope_theta=100.0,
        query_bias=True, key_bias=False, value_bias=True, proj_bias=True, mlp_bias=True,
        hidden_act='gelu', use_gated_mlp=False, layerscale_value=1.0)
    with torch.device('meta'):
        hf = DINOv3ViTModel(cfg)
    sd = model.state_dict()
    remap = {
        'embeddings.cls_token': sd['cls_token'],
        'embeddings.mask_token': sd['mask_token'][None],
        'embeddings.register_tokens': sd['storage_tokens'],
        'embeddings.patch_embeddings.weight': sd['patch_embed.proj.weight'],
        'embeddings.patch_embeddings.bias': sd['patch_embed.proj.bias'],
        'norm.weight': sd['norm.weight'], 'norm.bias': sd['norm.bias'],
    }
    for i in range(depth):
        ours, theirs = f'blocks.{i}.', f'model.layer.{i}.'
        q_w, k_w, v_w = sd[ours + 'attn.qkv.weight'].split(DIM)
        # transformers has no key bias at all: the masked bias must equal that.
        q_b, _, v_b = (sd[ours + 'attn.qkv.bias'] * sd[ours + 'attn.qkv.bias_mask']).split(DIM)
        remap.update({
            theirs + 'attention.q_proj.weight': q_w, theirs + 'attention.q_proj.bias': q_b,
            theirs + 'attention.k_proj.weight': k_w,
            theirs + 'attention.v_proj.weight': v_w, theirs + 'attention.v_proj.bias': v_b,
            theirs + 'layer_scale1.lambda1': sd[ours + 'ls1.gamma'],
            theirs + 'layer_scale2.lambda1': sd[ours + 'ls2.gamma'],
        })
        for a, b in (('norm1', 'norm1'), ('norm2', 'norm2'), ('attn.proj', 'attention.o_proj'),
                     ('mlp.fc1', 'mlp.up_proj'), ('mlp.fc2', 'mlp.down_proj')):
            for s in ('weight', 'bias'):
                remap[f'{theirs}{b}.{s}'] = sd[f'{ours}{a}.{s}']
    result = hf.load_state_dict(remap, strict=False, assign=True)
    assert not result.missing_keys and result.unexpected_keys == []
    # transformers recomputes exact RoPE frequencies; the checkpoint's periods are bf16-rounded
    # and DINOv3 uses them as stored (a ~1e-2 difference otherwise). Use ours on both sides.
    hf.rope_embeddings.inv_freq = 1.0 / model.rope_embed.periods.float()
    return hf.eval()


@pytest.mark.slow
def test_fp32_matches_transformers(dino, images):
    """Tolerance 1e-5 on unit-scale LayerNorm outputs: both sides are fp32 but differ in op
    order (fused qkv vs separate projections, angles = c / period vs c * (1 / period),
    different SDPA backends), which leaves ~2e-6 after 18 blocks (measured)."""
    with _torchvision_shim_hidden(), torch.no_grad():
        hf = _hf_oracle(dino, depth=max(TAPS) + 1)
        hidden = hf(imagenet_normalize(images), output_hidden_states=True).hidden_states
        # hidden[0] is the embedding output; hidden[i + 1] is block i's output.
        expected = [hf.norm(hidden[i + 1])[:, 5:].reshape(2, 3, 4, DIM) for i in TAPS]
        got = dino(images, layers=TAPS)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32 and g.shape == (2, 3, 4, DIM)
        assert e.std() > 0.5  # far from constant: the check has teeth
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_bf16_policy_matches_official_descriptor(dino, images):
    """Our module as the official Descriptor's backbone (official wrapper: ``model.to(bf16)``,
    autocast around normalisation + all 24 blocks via get_intermediate_layers) vs our own
    bf16-policy forward on the same bf16 module: same ops in the same order on the same device,
    hence bit-identical. The official runs all 24 blocks, ours stops after block 17, so this also
    shows that ``stop_early`` changes nothing."""
    import_official()
    from romav2.features import Descriptor

    # The official wrapper replaces type(backbone).forward: give it a throw-away subclass.
    backbone = copy.deepcopy(dino)
    backbone.__class__ = type('InjectedDINOv3', (DINOv3ViTL16,), {})
    with mock.patch.object(torch.hub, 'load', return_value=backbone):
        descriptor = Descriptor(Descriptor.Cfg())
    assert descriptor is backbone and backbone.cls_token.dtype == torch.bfloat16
    assert backbone.rope_embed.periods.dtype == torch.bfloat16
    image = images[:1]  # batch 1, as the official ``match`` runs (layouts differ from B > 1)
    with torch.no_grad():
        official = descriptor(image)
        ours = DINOv3ViTL16.forward(backbone, image, layers=TAPS, amp_dtype=torch.bfloat16)
    for o, u in zip(official, ours):
        assert u.shape == (1, 3, 4, DIM) and u.dtype == o.dtype
        assert torch.equal(u, o)
