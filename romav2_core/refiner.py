"""The three convolutional refiners (strides 4, 2, 1) and the cascade that runs them.

Reproduces romav2 2.0.1 ``refiner.py`` (``ConvRefiner``, ``Refiners`` "roma-4-pow2") and the
between-scales / HR-pass logic of ``romav2.py`` (``_interpolate_warp_and_confidence`` and the
refinement loop of ``RoMaV2.forward``). State-dict names equal the checkpoint's ``refiners.*``
keys with the ``refiners.`` prefix stripped.

Conventions: features and warps are BHWC; warps are normalised (x, y) coordinates
(``align_corners=False``, see ``geometry.py``); confidences are
``[overlap logit, P00, P10, P11]`` with P the 2x2 precision in px^-2 of the current grid.

Precision policy (official): projection, sampling, correlation and heads in fp32; only the
nine conv blocks run under ``torch.autocast(device.type, amp_dtype)`` (bf16 in the reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from romav2_core.constants import pixel_grid, size_constant
from romav2_core.conv_bn import conv_bn
from romav2_core.local_correlation import local_correlation
from romav2_core.precision import autocast_region

#: Image size that ``scale_factor`` is relative to (official ``anchor_width/height``).
ANCHOR_SIZE = 512
#: Refiner strides in execution order (coarse to fine); also the ``Refiners`` keys.
STRIDES = (4, 2, 1)
#: Small constant keeping the Cholesky diagonal strictly positive.
CHOL_EPS = 1e-6
#: The warp head's output is divided by REFINE_INIT x (W_feat, H_feat) (``refine_init``).
REFINE_INIT = 4.0


@dataclass(frozen=True)
class RefinerSpec:
    """Dimensions of one refiner; ``hidden = 2 proj + emb + K`` (K = 0 without correlation)."""
    feat_dim: int
    proj_dim: int
    disp_emb_dim: int
    corr_radius: Optional[int]

    @property
    def hidden_dim(self) -> int:
        k = 0 if self.corr_radius is None else (2 * self.corr_radius + 1) ** 2
        return 2 * self.proj_dim + self.disp_emb_dim + k


#: The released "roma-4-pow2" configuration (VGG19-BN features 256/128/64 channels).
REFINER_SPECS = {
    4: RefinerSpec(feat_dim=256, proj_dim=192, disp_emb_dim=79, corr_radius=3),  # hidden 512
    2: RefinerSpec(feat_dim=128, proj_dim=48, disp_emb_dim=23, corr_radius=1),  # hidden 128
    1: RefinerSpec(feat_dim=64, proj_dim=12, disp_emb_dim=8, corr_radius=None),  # hidden 32
}


def displacement_scale_factor(H_img: int, W_img: int, device=None) -> Tensor:
    """``scale_factor`` ``[2]`` = (W_img / 512, H_img / 512), fp32, of the stage's image (a
    shared, cached tensor: do not modify it)."""
    device = torch.device('cpu' if device is None else device)
    return size_constant('displacement_scale', lambda: torch.tensor(
        (W_img / ANCHOR_SIZE, H_img / ANCHOR_SIZE), dtype=torch.float32, device=device),
        H_img, W_img, device)


def _warp_step(H: int, W: int, device: torch.device) -> Tensor:
    """``[2]`` = (REFINE_INIT W, REFINE_INIT H): the warp head's output divisor."""
    return size_constant('warp_step', lambda: torch.tensor(
        (REFINE_INIT * W, REFINE_INIT * H), dtype=torch.float32, device=device), H, W, device)


def pad_confidence(confidence: Tensor) -> Tensor:
    """Zero-pad a 1-channel matcher confidence ``[B x H x W x 1]`` to 4 channels (new tensor);
    a 4-channel one is returned as is."""
    if confidence.shape[-1] == 4:
        return confidence
    if confidence.shape[-1] != 1:
        raise ValueError(f'confidence must have 1 or 4 channels, got {confidence.shape[-1]}')
    return torch.cat((confidence, confidence.new_zeros(*confidence.shape[:-1], 3)), dim=-1)


def _bhwc_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B x H x W x C]`` to ``size`` (align_corners=False, no antialias)."""
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode='bilinear',
                         align_corners=False).permute(0, 2, 3, 1)


class RefinerBlock(nn.Module):
    """Depthwise conv k5 -> BatchNorm2d -> ReLU -> pointwise conv; ``[B x D x H x W]`` -> same.

    No residual connection (as the reference). Autocast is applied by the caller.
    """

    def __init__(self, dim: int, kernel_size: int = 5, bn_momentum: float = 0.01):
        super().__init__()
        self.conv_depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2,
                                        groups=dim)
        self.norm = nn.BatchNorm2d(dim, momentum=bn_momentum)
        self.conv_pointwise = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        # In place: the ReLU overwrites only the fresh BatchNorm output.
        return self.conv_pointwise(F.relu(conv_bn(x, self.conv_depthwise, self.norm),
                                          inplace=True))


class ConvRefiner(nn.Module):
    """One refiner: predicts a warp correction and a confidence increment at one stride."""

    def __init__(self, spec: RefinerSpec, hidden_blocks: int = 8, kernel_size: int = 5):
        super().__init__()
        self.spec = spec
        dim = spec.hidden_dim
        self.proj = nn.Linear(spec.feat_dim, spec.proj_dim)
        self.disp_emb = nn.Conv2d(2, spec.disp_emb_dim, 1)
        self.block1 = RefinerBlock(dim, kernel_size)
        self.hidden_blocks = nn.Sequential(
            *[RefinerBlock(dim, kernel_size) for _ in range(hidden_blocks)])
        self.warp_head = nn.Conv2d(dim, 2, 1)
        self.confidence_head = nn.Conv2d(dim, 4, 1)

    def _project(self, f: Tensor) -> Tensor:
        """``[B x H x W x feat_dim]`` (any float dtype) -> ``[B x H x W x proj_dim]`` fp32."""
        B, H, W, D = f.shape
        if D != self.spec.feat_dim:
            raise ValueError(f'expected {self.spec.feat_dim}-channel features, got {D}')
        return self.proj(f.reshape(B, H * W, D).float()).reshape(B, H, W, self.spec.proj_dim)

    def forward(self, f_A: Tensor, f_B: Tensor, prev_warp: Tensor,
                prev_confidence: Optional[Tensor], scale_factor: Union[Tensor, Sequence[float]],
                amp_dtype: Optional[torch.dtype] = None,
                local_corr_impl: str = 'auto') -> tuple[Tensor, Tensor]:
        """Refine ``prev_warp`` once.

        Args:
            f_A, f_B: ``[B x H x W x feat_dim]`` fine features of A and B at this stride (BHWC,
                fp32 or bf16; projected in fp32). Both must have the same size.
            prev_warp: ``[B x H x W x 2]`` normalised warp A -> B at this stride.
            prev_confidence: ``[B x H x W x 4]`` (or ``x 1``: zero-padded) accumulated
                confidence, or None (the increment is returned as is).
            scale_factor: ``[2]`` = (W_img / 512, H_img / 512) of the image at this stage;
                scales the displacement fed to the embedding.
            amp_dtype: autocast dtype of the conv blocks (None = fp32; bf16 = official).
            local_corr_impl: ``'auto'``, ``'cuda'`` or ``'torch'`` (``local_correlation``).

        Returns:
            ``warp`` ``[B x H x W x 2]`` and ``confidence`` ``[B x H x W x 4]``, both fp32 and new
            tensors (inputs are not modified).
        """
        B, H, W, _ = f_A.shape
        if f_B.shape[:3] != (B, H, W) or prev_warp.shape != (B, H, W, 2):
            raise ValueError(f'f_B {tuple(f_B.shape)} and prev_warp {tuple(prev_warp.shape)} '
                             f'must match f_A {tuple(f_A.shape)} in B, H, W')
        # fp32 outside the conv blocks even if the caller runs under autocast.
        with autocast_region(f_A.device.type, None):
            return self._refine(f_A, f_B, prev_warp.detach(), prev_confidence, scale_factor,
                                amp_dtype, local_corr_impl)

    def _refine(self, f_A, f_B, prev_warp, prev_confidence, scale_factor, amp_dtype,
                local_corr_impl):
        B, H, W, _ = f_A.shape
        device = f_A.device
        scale = torch.as_tensor(scale_factor, dtype=torch.float32, device=device)

        f_A = self._project(f_A).permute(0, 3, 1, 2)
        f_B = self._project(f_B).permute(0, 3, 1, 2)
        f_BA = F.grid_sample(f_B, prev_warp, mode='bilinear', padding_mode='zeros',
                             align_corners=False)
        # The embedding sees the displacement in units of the 512-px anchor image, so the same
        # pixel displacement gives the same input whatever the stage's resolution.
        displacement = (prev_warp - pixel_grid(B, H, W, device)).permute(0, 3, 1, 2)
        emb = self.disp_emb(scale[None, :, None, None] * displacement)
        parts = [f_A, f_BA, emb]
        if self.spec.corr_radius is not None:
            parts.append(local_correlation(f_A, f_B, prev_warp, self.spec.corr_radius,
                                           impl=local_corr_impl))
        z = torch.cat(parts, dim=1)
        with autocast_region(device.type, amp_dtype):
            z = self.hidden_blocks(self.block1(z))
        z = z.float()

        delta_warp = self.warp_head(z).permute(0, 2, 3, 1)
        c = self.confidence_head(z).permute(0, 2, 3, 1)
        # Δ / (4 W) in normalised units (a feature pixel spans 2 / W) = Δ / 8 feature pixels.
        warp = prev_warp + delta_warp / _warp_step(H, W, device)
        # Precision increment P = L Lᵀ with L = [[l00, 0], [l10, l11]], positive definite.
        l00 = F.softplus(c[..., 1]) + CHOL_EPS
        l10 = c[..., 2]
        l11 = F.softplus(c[..., 3]) + CHOL_EPS
        delta_conf = torch.stack((c[..., 0], l00 * l00, l00 * l10, l10 * l10 + l11 * l11), -1)
        if prev_confidence is None:
            return warp, delta_conf
        return warp, pad_confidence(prev_confidence.detach()) + delta_conf


class Refiners(nn.ModuleDict):
    """The cascade of ``ConvRefiner``s keyed "4", "2", "1" (run in that order)."""

    def __init__(self):
        super().__init__({str(s): ConvRefiner(REFINER_SPECS[s]) for s in STRIDES})

    def forward(self, feats_A: dict[int, Tensor], feats_B: dict[int, Tensor], warp: Tensor,
                confidence: Tensor, scale_factor: Union[Tensor, Sequence[float]],
                hr_pass: bool = False, amp_dtype: Optional[torch.dtype] = None,
                local_corr_impl: str = 'auto') -> dict[int, tuple[Tensor, Tensor]]:
        """Run one refinement stage (all three refiners) for the direction A -> B.

        Args:
            feats_A, feats_B: ``{4, 2, 1: [B x H/s x W/s x C_s]}`` fine (VGG) features, BHWC,
                C_s = 256 / 128 / 64; their sizes set the output grids.
            warp: ``[B x h x w x 2]`` incoming warp at any resolution (the matcher's stride-4
                warp, or the LR result when ``hr_pass``).
            confidence: ``[B x h x w x 1]`` (matcher overlap logit, zero-padded to 4) or
                ``[B x h x w x 4]``.
            scale_factor: ``[2]`` = (W_img / 512, H_img / 512) of this stage's image
                (:func:`displacement_scale_factor`).
            hr_pass: the second, high-resolution pass: the incoming precision channels are
                zeroed before refiner "4" (its increment is absolute, so the LR precision cannot
                be carried over; the overlap logit is kept), as the reference's stage 1.
            amp_dtype, local_corr_impl: see :meth:`ConvRefiner.forward`.

        Returns:
            ``{4, 2, 1: (warp [B x H/s x W/s x 2], confidence [B x H/s x W/s x 4])}``.
            Caller tensors are never modified in place.
        """
        confidence = pad_confidence(confidence)
        if hr_pass:
            confidence = torch.cat((confidence[..., :1], torch.zeros_like(confidence[..., 1:])),
                                   dim=-1)
        outputs = {}
        for stride in STRIDES:
            size = tuple(feats_A[stride].shape[1:3])
            # Bilinear resize of warp and all 4 confidence channels (precision included); an
            # exact identity when the size is unchanged (refiner "4" after the matcher).
            warp = _bhwc_resize(warp.detach(), size)
            confidence = _bhwc_resize(confidence.detach(), size)
            warp, confidence = self[str(stride)](
                feats_A[stride], feats_B[stride], warp, confidence, scale_factor,
                amp_dtype=amp_dtype, local_corr_impl=local_corr_impl)
            outputs[stride] = (warp, confidence)
        return outputs
