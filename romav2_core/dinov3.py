"""DINOv3 ViT-L/16 backbone (the frozen coarse-feature extractor of RoMa v2).

Architecture (the DINOv3 hub ``dinov3_vitl16``): 16 px patches, 1024-d tokens, 24 pre-norm
blocks with 16 heads, a 4096-d GELU MLP, LayerNorm eps 1e-5, LayerScale, a qkv projection whose
key bias is masked, 1 cls + 4 storage (register) tokens ahead of the patch tokens, and 2-D RoPE
(base 100) on the patch tokens only. RoMa v2 taps blocks 11 and 17 (0-based), each through the
final ``norm``, patch tokens only.

``state_dict()`` keys equal the checkpoint's ``f.*`` keys without the ``f.`` prefix, all 24
blocks included, so ``romav2.0.1.pt`` loads strictly. ``mask_token`` is only used by DINOv3's
masked-image training and is kept for the checkpoint.

Precision: the official policy is bf16 weights (``model.to(torch.bfloat16)``) plus bf16
autocast around everything from the normalisation on; pass ``amp_dtype=torch.bfloat16`` to
``forward`` after casting the module. RoPE tables are always computed in fp32 from the stored
(bf16-rounded) ``periods``; q and k are rotated in fp32 and cast back.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from romav2_core.normalization import imagenet_normalize
from romav2_core.precision import autocast_region
from romav2_core.rope import RopeEmbedding
from romav2_core.vit import Block

#: The blocks RoMa v2 taps (0-based).
DEFAULT_LAYERS = (11, 17)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv: ``[B x 3 x H x W]`` -> ``[B x H/p*W/p x C]``."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DINOv3ViTL16(nn.Module):
    """DINOv3 ViT-L/16 with the RoMa v2 tap interface (see the module docstring)."""

    patch_size = 16
    embed_dim = 1024
    depth = 24
    num_heads = 16
    mlp_dim = 4096
    norm_eps = 1e-5
    n_storage_tokens = 4

    def __init__(self):
        super().__init__()
        dim = self.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, self.n_storage_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(self.patch_size, dim)
        self.rope_embed = RopeEmbedding(dim // self.num_heads, base=100.0)
        self.blocks = nn.ModuleList(
            Block(dim, self.num_heads, self.mlp_dim, norm_eps=self.norm_eps, layerscale=True,
                  mask_k_bias=True)
            for _ in range(self.depth))
        self.norm = nn.LayerNorm(dim, eps=self.norm_eps)

    @property
    def n_prefix_tokens(self) -> int:
        return 1 + self.n_storage_tokens

    def forward(self, images: Tensor, layers: Sequence[int] = DEFAULT_LAYERS,
                amp_dtype: Optional[torch.dtype] = None, stop_early: bool = True,
                normalized: bool = False) -> list[Tensor]:
        """Tapped features of RGB ``images`` ``[B x 3 x H x W]`` in [0, 1] (H, W multiples of 16).

        Returns one ``[B x H/16 x W/16 x 1024]`` tensor per entry of ``layers`` (0-based block
        indices): that block's output through the final norm, prefix tokens dropped.
        ``amp_dtype`` runs everything (normalisation included, as the official wrapper does)
        under autocast of that dtype; the official bf16 policy also expects the module cast with
        ``model.to(torch.bfloat16)``. The outputs' dtype then depends on the device's autocast
        rules (bf16 on CPU, where LayerNorm is not promoted). ``amp_dtype=None``: autocast
        disabled (fp32 module, fp32 compute).
        ``stop_early`` skips the blocks after the last tapped one (identical outputs).
        ``normalized``: ``images`` are already ImageNet-normalised fp32 (``RoMaV2`` normalises
        once for both encoders; the same fp32 values the normalisation here would give).
        """
        B, C, H, W = images.shape
        if C != 3 or H % self.patch_size or W % self.patch_size:
            raise ValueError(f'images must be [B x 3 x H x W] with H, W multiples of '
                             f'{self.patch_size}, got {tuple(images.shape)}')
        with autocast_region(images.device.type, amp_dtype):
            x = images if normalized else imagenet_normalize(images)
            tokens = self._tapped_tokens(x, layers, stop_early)
        h, w = H // self.patch_size, W // self.patch_size
        return [t.reshape(B, h, w, -1) for t in tokens]

    def get_intermediate_layers(self, x: Tensor, n: int | Sequence[int] = DEFAULT_LAYERS
                                ) -> tuple[Tensor, ...]:
        """DINOv3-hub compatible taps (lets the official code use this backbone).

        ``x``: already normalised ``[B x 3 x H x W]``; ``n``: block indices, or an int for the
        last ``n`` blocks. Returns one ``[B x HW/256 x 1024]`` patch-token tensor per tapped
        block in block order, after the final norm. All 24 blocks run, as in the hub.
        """
        layers = range(self.depth - n, self.depth) if isinstance(n, int) else sorted(set(n))
        return tuple(self._tapped_tokens(x, layers, stop_early=False))

    def _tapped_tokens(self, x: Tensor, layers: Sequence[int], stop_early: bool) -> list[Tensor]:
        """Normalised images -> patch tokens ``[B x hw x 1024]`` of each block in ``layers``,
        through the final norm."""
        layers = [i if i >= 0 else self.depth + i for i in layers]
        if not layers or min(layers) < 0 or max(layers) >= self.depth:
            raise ValueError(f'layers={layers!r}: need block indices in [0, {self.depth})')
        B, _, H, W = x.shape
        patches = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(B, -1, -1),
                       self.storage_tokens.expand(B, -1, -1), patches], dim=1)
        rope = self.rope_embed(H // self.patch_size, W // self.patch_size, dtype=torch.float32)
        taps = {}
        last = max(layers) if stop_early else self.depth - 1
        for i, block in enumerate(self.blocks[:last + 1]):
            x = block(x, rope)
            if i in layers:
                taps[i] = x
        return [self.norm(taps[i])[:, self.n_prefix_tokens:] for i in layers]

