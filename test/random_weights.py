"""Seeded random state dicts for the full model, scaled so outputs are far from constant.

The modules' default init makes RoMa v2 nearly constant (LayerScale 1e-5 turns every DINOv3
block into an identity; the heads output overlap ~0.41 everywhere), which would let a broken
port pass an equivalence test. Here every weight gets a fan-in scaled normal with a gain above
1, biases and norms get visible offsets, LayerScale gammas are O(0.1), and BN running stats are
non-trivial. Buffers whose values carry meaning (RoPE periods, the k-bias mask, the Fourier
``omega``, ``temp``, ``scale``) are kept as constructed.
"""
from __future__ import annotations

import math

import torch

KEEP = ('periods', 'bias_mask', 'omega', 'temp', 'scale', 'num_batches_tracked')
#: Output layers scaled down so that warps stay mostly inside the image (normalised |x| ~ 1)
#: and overlap logits stay O(1): saturated outputs would hide errors downstream.
OUTPUT_GAIN = {'matcher.head.scratch.output_conv2.2.': 0.01, 'warp_head.': 0.002,
               'confidence_head.': 0.02}


def spread_state_dict(reference: dict, seed: int = 0, gain: float = 1.5) -> dict:
    """A new state dict with the keys, shapes and dtypes of ``reference``, randomised."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    out = {}
    for key, ref in reference.items():
        leaf = key.rsplit('.', 1)[-1]
        if leaf in KEEP or not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        shape = ref.shape
        if leaf == 'gamma':
            value = normal(shape, 0.05, 0.2)
        elif leaf == 'running_var':
            value = torch.rand(shape, generator=g) + 0.5
        elif leaf == 'running_mean':
            value = normal(shape, 0.1)
        elif ref.ndim == 1 and ('norm' in key or key.split('.')[-2].isdigit() and 'layers' in key):
            # LayerNorm / BatchNorm affine parameters.
            value = normal(shape, 0.1, 1.0 if leaf == 'weight' else 0.0)
        elif leaf == 'bias' or ref.ndim == 1:
            value = normal(shape, 0.1)
        else:
            fan_in = math.prod(shape[1:]) if ref.ndim > 1 else shape[0]
            # The refiners stack 18 convs without normalised residuals: a gain above 1 would
            # grow activations ~1.5^18 and make any rounding difference chaotic.
            value = normal(shape, (1.0 if key.startswith('refiners.') else gain) /
                           math.sqrt(fan_in))
        for prefix, factor in OUTPUT_GAIN.items():
            if prefix in key:
                value = value * factor
        # Values representable in the reference dtype, so fp32 and bf16 models hold the same.
        out[key] = value.to(ref.dtype)
    return out


def randomize_transformer_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """In place, for one transformer component (DINOv3, the coarse matcher): parameters only,
    buffers (RoPE periods, the q/k/v bias mask) keep their values. LayerScale gammas O(0.1-1)
    so the blocks really transform the tokens (the default 1e-5 makes them near identities),
    norm weights around 1, tokens O(0.5), fan-in scaled matrices, small non-zero vectors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.uniform_(0.1, 1.0, generator=g)
            elif 'norm' in name and name.endswith('weight') and p.ndim == 1:
                p.normal_(1.0, 0.1, generator=g)
            elif 'token' in name:
                p.normal_(0.0, 0.5, generator=g)
            elif p.ndim >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=g)
            else:
                p.normal_(0.0, 0.1, generator=g)
    return model
