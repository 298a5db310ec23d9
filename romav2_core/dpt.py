"""DPT head of the RoMa v2 coarse matcher: two token maps to a dense warp at stride 4.

A DPT-style (Ranftl et al., "Vision Transformers for Dense Prediction") decoder with the
configuration of RoMa v2 2.0.1: token dim 1024, 256 fusion features, pyramid channels
256/512/1024/1024, no positional embedding, 3 outputs at 4 output pixels per token
(16-px patches, down ratio 4). Submodule names are the checkpoint's (``matcher.head.*`` with
the prefix stripped), so the official weights load with ``strict=True``.

Data flow for token maps of ``h x w``:

* the two inputs (``t0``, ``t1``) feed the four pyramid levels as ``[t0, t0, t1, t1]``; a
  shared LayerNorm, then a 1x1 projection per level;
* resize to strides 4h, 2h, h, ceil(h/2) (ConvT k4 s4, ConvT k2 s2, identity, conv k3 s2);
* 3x3 channel reduction to 256 (``scratch.layer*_rn``), then top-down fusion (``refinenet4``
  to ``refinenet1``) up to 8h x 8w;
* ``output_conv1`` (256 -> 128), a bilinear resize to 4h x 4w, and ``output_conv2``
  (128 -> 32 -> 3) in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from romav2_core.precision import autocast_region

#: Channel width of the input tokens (the matcher's feature dim).
TOKEN_DIM = 1024
#: Channels of the pyramid levels after projection and resize.
PYRAMID_CHANNELS = (256, 512, 1024, 1024)
#: Channel width of the fusion blocks.
FEATURES = 256
#: Output pixels per token along each axis: patch size 16 / down ratio 4.
OUTPUT_PER_TOKEN = 4
#: Output channels: warp x, warp y (normalised coordinates), overlap logit.
OUT_DIM = 3


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B x C x H x W]`` with ``align_corners=True`` (the official mode).

    The official splits the batch when the output exceeds 1.6e9 elements (a guard against
    32-bit indexing); interpolation is per sample, so that changes no value, and this head's
    tensors stay orders of magnitude below that size.
    """
    return F.interpolate(x, size=size, mode='bilinear', align_corners=True)


def _conv3x3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


class _ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)`` on ``[B x C x H x W]``, shape preserving."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        # The official unit applies nn.ReLU(inplace=True) to its input first, which overwrites
        # x, so its skip connection adds relu(x), not x. Reproduced explicitly, out of place.
        x = F.relu(x)
        # In place on the fresh conv outputs only (same values, two fewer activation copies).
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


class _FusionBlock(nn.Module):
    """One top-down fusion step: add the skip level, refine, resize, mix channels (1x1)."""

    def __init__(self, channels: int, has_skip: bool):
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)
        if has_skip:
            self.resConfUnit1 = _ResidualConvUnit(channels)
        self.resConfUnit2 = _ResidualConvUnit(channels)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        """``x``, ``skip``: ``[B x C x H x W]``; returns ``[B x C x size[0] x size[1]]``."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(_resize(self.resConfUnit2(x), size))


class _Scratch(nn.Module):
    """Channel reduction, fusion and output convolutions (the official ``scratch`` container)."""

    def __init__(self):
        super().__init__()
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = (
            _conv3x3(c, FEATURES, bias=False) for c in PYRAMID_CHANNELS)
        self.refinenet1 = _FusionBlock(FEATURES, has_skip=True)
        self.refinenet2 = _FusionBlock(FEATURES, has_skip=True)
        self.refinenet3 = _FusionBlock(FEATURES, has_skip=True)
        self.refinenet4 = _FusionBlock(FEATURES, has_skip=False)
        self.output_conv1 = _conv3x3(FEATURES, FEATURES // 2)
        # Runs outside autocast, in fp32 (see DPTHead.forward). Index 1 is the parameterless ReLU.
        self.output_conv2 = nn.Sequential(
            _conv3x3(FEATURES // 2, 32), nn.ReLU(), nn.Conv2d(32, OUT_DIM, kernel_size=1))

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        """Pyramid ``[B x C_i x H_i x W_i]`` at 4h, 2h, h, ceil(h/2) -> ``[B x 128 x 8h x 8w]``."""
        l1 = self.layer1_rn(pyramid[0])
        l2 = self.layer2_rn(pyramid[1])
        l3 = self.layer3_rn(pyramid[2])
        l4 = self.layer4_rn(pyramid[3])
        out = self.refinenet4(l4, None, size=l3.shape[2:])
        out = self.refinenet3(out, l3, size=l2.shape[2:])
        out = self.refinenet2(out, l2, size=l1.shape[2:])
        out = self.refinenet1(out, l1, size=(2 * l1.shape[2], 2 * l1.shape[3]))
        return self.output_conv1(out)


class DPTHead(nn.Module):
    """RoMa v2 DPT head: two ``[B x h x w x 1024]`` token maps -> ``[B x 4h x 4w x 3]``.

    Numerics follow romav2 2.0.1 exactly; the only difference in work is that the shared
    LayerNorm runs once per distinct input instead of once per pyramid level (the official
    normalises each duplicated input twice, with identical results).
    """

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(TOKEN_DIM)
        self.projects = nn.ModuleList(
            nn.Conv2d(TOKEN_DIM, c, kernel_size=1) for c in PYRAMID_CHANNELS)
        c1, c2, _, c4 = PYRAMID_CHANNELS
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c1, c1, kernel_size=4, stride=4),
            nn.ConvTranspose2d(c2, c2, kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c4, c4, kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = _Scratch()

    def forward(self, feats: list[Tensor],
                amp_dtype: torch.dtype | None = torch.bfloat16) -> Tensor:
        """Dense warp and overlap from two token maps.

        Args:
            feats: ``[t0, t1]``, each ``[B x h x w x 1024]`` float (the matcher passes DINOv3
                layer 11 and layer 17 + multi-view features + match embedding).
            amp_dtype: autocast dtype for everything up to the final resize (the official
                hard-codes ``torch.bfloat16``); None computes in fp32.

        Returns:
            ``[B x 4h x 4w x 3]`` fp32: warp x, warp y in normalised coordinates, overlap
            logit. A permuted view of a ``[B x 3 x 4h x 4w]`` tensor, as the official returns.
        """
        t0, t1 = feats
        B, h, w, _ = t0.shape
        device_type = t0.device.type
        with autocast_region(device_type, amp_dtype):
            normed = [self._normalize(t) for t in (t0, t1)]
            pyramid = [resize(project(normed[level // 2]))
                       for level, (project, resize)
                       in enumerate(zip(self.projects, self.resize_layers))]
            out = _resize(self.scratch(pyramid), (OUTPUT_PER_TOKEN * h, OUTPUT_PER_TOKEN * w))
        # The official leaves its bf16 region here and finishes in fp32; disabling autocast
        # keeps that true even if a caller wraps the head in its own autocast region.
        with autocast_region(device_type, None):
            out = self.scratch.output_conv2(out.float())
        return out.permute(0, 2, 3, 1)

    def _normalize(self, t: Tensor) -> Tensor:
        """LayerNorm of ``[B x h x w x C]`` tokens -> a channels-last ``[B x C x h x w]`` view.

        Normalises the flattened ``[B x hw x C]`` tokens and views the result as BCHW through
        ``[B x C x hw]``, which gives exactly the official tensor: the same values and the same
        strides, degenerate ones included. That matters for bit-exactness: at B=1 the official's
        batch stride is C (the view of a size-1 dim), not hwC as a plain ``permute`` of the BHWC
        LayerNorm output would give, and CPU torch picks a different 1x1-conv kernel for the two
        layouts (one-rounding-step bf16 differences from ``projects`` on). The LayerNorm output is
        contiguous whatever the input's strides, so only B, h and w decide the layout.
        """
        B, h, w, C = t.shape
        return self.norm(t.reshape(B, h * w, C)).transpose(1, 2).unflatten(2, (h, w))
