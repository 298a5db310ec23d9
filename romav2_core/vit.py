"""Pre-norm transformer building blocks shared by DINOv3 and the multi-view transformer.

Attribute names reproduce the checkpoint's keys (``norm1``, ``attn.qkv``, ``attn.proj``,
``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``; ``attn.qkv.bias_mask`` when the
key bias is masked). Tokens are ``[B x N x C]`` throughout.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from romav2_core.rope import apply_rope


class MaskedBiasLinear(nn.Linear):
    """``nn.Linear`` whose bias is multiplied by a persistent ``bias_mask`` buffer.

    DINOv3 trains without a key bias by masking it: the mask is 1 for q and v and 0 for k
    (``mask_k_bias``). The checkpoint stores the mask, so it is a buffer that gets loaded; it is
    initialised to its trained value (never NaN, unlike the reference's pre-init state).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=True)
        if out_features % 3:
            raise ValueError('a masked-k-bias qkv projection needs out_features = 3 * dim')
        dim = out_features // 3
        mask = torch.ones(out_features)
        mask[dim:2 * dim] = 0.0
        self.register_buffer('bias_mask', mask, persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class Attention(nn.Module):
    """Multi-head self-attention with optional 2-D RoPE on the trailing patch tokens.

    ``rope`` = ``(sin, cos)``, each ``[N_patch x D_head]``: the last ``N_patch`` tokens of q and k
    are rotated, the leading prefix tokens (cls/registers) are not. q and k are cast to the
    tables' dtype for the rotation and back afterwards (the mv-ViT rotates in bf16 even when the
    rest runs in fp32). ``rope=None``: no positional encoding at all.
    """

    def __init__(self, dim: int, num_heads: int, mask_k_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim={dim} not divisible by num_heads={num_heads}')
        self.num_heads = num_heads
        self.qkv = MaskedBiasLinear(dim, 3 * dim) if mask_k_bias else nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [B x heads x N x D_head]
        if rope is not None:
            q, k = self._rotate(q, rope), self._rotate(k, rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    @staticmethod
    def _rotate(t: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        sin, cos = rope
        n_prefix = t.shape[-2] - sin.shape[-2]
        if n_prefix < 0:
            raise ValueError(f'{t.shape[-2]} tokens but RoPE tables for {sin.shape[-2]} patches')
        t_rope = t.to(sin.dtype)
        rotated = apply_rope(t_rope[:, :, n_prefix:], sin, cos)
        return torch.cat((t_rope[:, :, :n_prefix], rotated), dim=-2).to(t.dtype)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` (exact, erf-based GELU)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma`` (``gamma`` ``[C]``)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``.

    ``layerscale=False`` gives parameter-free identities for ``ls1``/``ls2`` (no checkpoint keys),
    as in the mv-ViT.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm_eps: float,
                 layerscale: bool = False, mask_k_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, mask_k_bias=mask_k_bias)
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x: Tensor, rope: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))
