"""RoMa v2 coarse matcher: multi-view transformer, match embedding and DPT head.

Pipeline for two images' DINOv3 taps ``[f11, f17]`` (each ``[B x h x w x 1024]``, h, w in
16-px patches):

1. ``mv_vit``: concat the taps (2048-d), project to 768-d, and run 12 blocks over both views
   batched on a view dim; blocks 0, 2, .. attend globally over both views without any positional
   encoding, blocks 1, 3, .. attend within each view with 2-D RoPE (both views share positions);
   final norm, project to 1024-d -> ``mv_A``, ``mv_B``.
2. Match embedding (fp32): single-head attention of A's tokens over B's with logits
   ``cos(mv_A, mv_B) / temp`` (temp 0.1), averaging a random Fourier embedding of B's grid: the
   expected matching position in B, Fourier-encoded.
3. DPT head on ``[f11_A, f17_A + mv_A + match_emb_AB]`` -> warp (normalised x, y) and overlap
   logit at stride 4 (4h x 4w).

Checkpoint names are those under ``matcher.*`` in ``romav2.0.1.pt`` (prefix stripped).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from romav2_core.dpt import DPTHead
from romav2_core.constants import pixel_grid
from romav2_core.precision import autocast_region
from romav2_core.rope import RopeEmbedding
from romav2_core.vit import Block


class MultiViewTransformer(nn.Module):
    """The "vit_base" match transformer over two views.

    ``forward``: ``[B x V x h x w x in_dim]`` (V = 2 views) -> ``[B x V x h x w x out_dim]``.
    No cls/register tokens, no LayerScale, LayerNorm eps 1e-6. ``rope_embed.periods`` is stored
    in bf16, as in the checkpoint.
    """

    def __init__(self, in_dim: int = 2048, dim: int = 768, out_dim: int = 1024, depth: int = 12,
                 num_heads: int = 12, mlp_dim: int = 3072, norm_eps: float = 1e-6):
        super().__init__()
        self.projector = nn.Linear(in_dim, dim)
        self.output_projector = nn.Linear(dim, out_dim)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_dim, norm_eps=norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.rope_embed = RopeEmbedding(dim // num_heads, base=100.0,
                                        buffer_dtype=torch.bfloat16)

    def forward(self, x: Tensor, rope_dtype: torch.dtype = torch.bfloat16) -> Tensor:
        """``rope_dtype``: dtype of the RoPE tables and of the q/k rotation (the official: bf16,
        whatever the autocast state)."""
        B, V, h, w, _ = x.shape
        x = self.projector(x.flatten(1, -2))  # [B x V*h*w x dim]
        D = x.shape[-1]
        rope = self.rope_embed(h, w, dtype=rope_dtype)
        for idx, block in enumerate(self.blocks):
            if idx % 2 == 0:
                x = block(x)  # global over both views, no positional encoding
            else:
                x = block(x.reshape(B * V, h * w, D), rope).reshape(B, V * h * w, D)
        x = self.output_projector(self.norm(x))
        return x.reshape(B, V, h, w, -1)


class CoarseMatcher(nn.Module):
    """Coarse matcher of RoMa v2 (see the module docstring).

    Buffers: ``omega`` ``[512 x 2]`` fp32 (random Fourier frequencies, ``2 pi randn``; loaded
    from the checkpoint), ``scale`` int64 scalar (1), ``temp`` fp32 scalar (0.1).
    """

    def __init__(self, temp: float = 0.1, scale: int = 1, dim: int = 1024, feat_dim: int = 1024,
                 num_feature_layers: int = 2):
        super().__init__()
        self.num_feature_layers = num_feature_layers
        self.register_buffer('omega', 2 * math.pi * torch.randn(dim // 2, 2))
        self.register_buffer('scale', torch.tensor(scale, dtype=torch.int64))
        self.register_buffer('temp', torch.tensor(temp, dtype=torch.float32))
        self.mv_vit = MultiViewTransformer(in_dim=feat_dim * num_feature_layers, out_dim=dim)
        self.head = DPTHead()

    def forward(self, feats_A: list[Tensor], feats_B: list[Tensor], bidirectional: bool = False,
                amp_dtype: Optional[torch.dtype] = None,
                head_amp_dtype: Optional[torch.dtype] = None,
                rope_bf16: bool = True) -> dict[str, Optional[Tensor]]:
        """Coarse warp and overlap between two images' DINOv3 taps.

        Args:
            feats_A, feats_B: ``[f11, f17]`` per image, each ``[B x h x w x 1024]`` (bf16 or
                fp32; the official bf16 policy passes bf16 on CPU). Not modified. A stage run
                without amp upcasts bf16 taps to fp32 (exact; the official never mixes these).
            bidirectional: also predict B -> A (reuses the mv-ViT output).
            amp_dtype: autocast dtype of the mv-ViT (official: bf16); None = fp32.
            head_amp_dtype: autocast dtype of the DPT head (official: bf16); None = fp32.
            rope_bf16: compute the mv-ViT RoPE in bf16 (official, even without amp) or fp32.

        Returns a dict of:
            ``warp_AB`` ``[B x 4h x 4w x 2]`` normalised (x, y) in B of each A pixel, fp32;
            ``confidence_AB`` ``[B x 4h x 4w x 1]`` overlap logit, fp32;
            ``warp_BA``, ``confidence_BA``: the same for B -> A, None unless bidirectional;
            ``mv_A``, ``mv_B`` ``[B x h x w x 1024]`` fp32 mv-ViT features;
            ``attn_logits_AB`` ``[B x hw x hw]`` fp32 (rows: A tokens, cols: B tokens, both
            row-major), ``match_emb_AB`` ``[B x h x w x 1024]`` fp32, and the ``_BA``
            counterparts (None unless bidirectional).
        """
        f_A, f_B = torch.cat(feats_A, dim=-1), torch.cat(feats_B, dim=-1)
        if f_A.shape != f_B.shape:
            raise ValueError(f'both images need the same token grid: {tuple(f_A.shape)} vs '
                             f'{tuple(f_B.shape)}')
        B, h, w, _ = f_A.shape
        if amp_dtype is None:  # fp32 mv-ViT: upcast bf16 taps (exact) for its fp32 weights
            f_A, f_B = f_A.float(), f_B.float()
        with autocast_region(f_A.device.type, amp_dtype):
            mv = self.mv_vit(torch.stack((f_A, f_B), dim=1),
                             rope_dtype=torch.bfloat16 if rope_bf16 else torch.float32)
        mv_A, mv_B = mv[:, 0].float(), mv[:, 1].float()

        pos_emb = self.fourier_grid(B, h, w, device=f_A.device)
        logits_AB, emb_AB = self.match_embedding(mv_A, mv_B, pos_emb)
        warp_AB, conf_AB = self._head(feats_A, mv_A, emb_AB, head_amp_dtype)
        out = dict(warp_AB=warp_AB, confidence_AB=conf_AB, mv_A=mv_A, mv_B=mv_B,
                   attn_logits_AB=logits_AB, match_emb_AB=emb_AB, warp_BA=None,
                   confidence_BA=None, attn_logits_BA=None, match_emb_BA=None)
        if bidirectional:
            logits_BA, emb_BA = self.match_embedding(mv_B, mv_A, pos_emb)
            warp_BA, conf_BA = self._head(feats_B, mv_B, emb_BA, head_amp_dtype)
            out.update(warp_BA=warp_BA, confidence_BA=conf_BA, attn_logits_BA=logits_BA,
                       match_emb_BA=emb_BA)
        return out

    def fourier_grid(self, B: int, h: int, w: int, device=None) -> Tensor:
        """Random Fourier embedding of the normalised token-centre grid, ``[B x h x w x 1024]``
        fp32: ``cat(sin(grid @ (scale omega)^T), cos(...))``."""
        grid = pixel_grid(B, h, w, device).reshape(B, h * w, 2)
        with autocast_region(grid.device.type, None):
            x_emb = nn.functional.linear(grid, self.scale * self.omega).reshape(B, h, w, -1)
            return torch.cat((x_emb.sin(), x_emb.cos()), dim=-1)

    def match_embedding(self, f_A: Tensor, f_B: Tensor, pos_emb_B: Tensor
                        ) -> tuple[Tensor, Tensor]:
        """Single-head attention of A's tokens over B's, in fp32 (autocast off).

        ``f_A``, ``f_B``: ``[B x h x w x D]`` fp32; ``pos_emb_B``: ``[B x h x w x E]``.
        Returns ``(logits [B x hw x hw], match_emb [B x h x w x E])`` with
        ``logits = (1 / temp) * cos_sim`` and ``match_emb = softmax_B(logits) @ pos_emb_B``.
        """
        B, h, w, _ = f_A.shape
        with autocast_region(f_A.device.type, None):
            # Plain x / ||x|| (no eps) and the reciprocal-temperature product, as the reference.
            f_A = f_A / f_A.norm(dim=-1, keepdim=True)
            f_B = f_B / f_B.norm(dim=-1, keepdim=True)
            cos = torch.einsum('bijd,bkld->bijkl', f_A, f_B)
            logits = ((1 / self.temp) * cos).reshape(B, h * w, h * w)
            attn = torch.softmax(logits, dim=2).reshape(B, h, w, h, w)
            match_emb = torch.einsum('bijkl,bkld->bijd', attn, pos_emb_B)
        return logits, match_emb

    def _head(self, feats: list[Tensor], mv: Tensor, match_emb: Tensor,
              amp_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor]:
        """DPT head on ``[f11, f17 + mv + match_emb]`` (a new list; the caller's is untouched)
        -> ``(warp [B x 4h x 4w x 2], overlap logit [B x 4h x 4w x 1])``."""
        head_in = list(feats[:-1]) + [feats[-1] + mv + match_emb]
        if amp_dtype is None:  # fp32 head: upcast bf16 taps (exact) for its fp32 weights
            head_in = [f.float() for f in head_in]
        out = self.head(head_in, amp_dtype=amp_dtype)
        return out[..., :2], out[..., 2:]
