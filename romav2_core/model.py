"""``RoMaV2``: the full dense matcher, composed of the backbone, matcher, fine features and refiners.

Pipeline (shapes for one pair at the ``H_lr x W_lr`` working resolution, B = batch):

1. ``encode``: DINOv3 taps ``2 x [B x H_lr/16 x W_lr/16 x 1024]`` and VGG19-BN features
   ``{1, 2, 4: [B x H/s x W/s x C_s]}`` (and VGG again at ``H_hr x W_hr`` when the HR pass is
   on). Pair-independent, so a video stream encodes each frame once (``ImageFeatures``).
2. ``match_features``: the coarse matcher (multi-view transformer, attention match embedding,
   DPT head) gives a stride-4 warp and overlap logit; refiners at strides 4, 2, 1 refine them
   and accumulate a 2x2 precision; optionally a second refinement pass at ``H_hr x W_hr``.

Outputs (``match`` / ``match_features``), on the output grid ``H_out x W_out`` (``output_hw``):
``warp_AB [B x H_out x W_out x 2]`` normalised coordinates (``geometry.py``),
``confidence_AB [B x H_out x W_out x 4]`` (overlap logit, P00, P10, P11),
``overlap_AB [B x H_out x W_out x 1]`` in [0, 1], ``precision_AB [B x H_out x W_out x 2 x 2]``
in px^-2 of the output grid, ``covariance_AB`` its inverse in px^2, and the ``*_BA``
counterparts when bidirectional (None otherwise) -- the official keys plus ``covariance_*``.

Inputs may be uint8 or float, on the CPU or already on the model's device: they are moved
first and converted, resized and ImageNet-normalised on the model's device (once per image for
both encoders). Size-only constants (grids, offsets, scale vectors) are built once per device
and size (``constants.py``); on CUDA, fp32 convolutions run without TF32.

Differences from the official package that do not change outputs: no import-time device, no
monkeypatching, no global torch/dynamo settings; DINOv3 stops after its last tapped block;
A and B go through DINOv3 and VGG as one batch; TF32 matmuls give a warning, not an exception.
``compile.compile_model`` compiles the four parts (``f``, ``refiner_features``, ``matcher``,
``refiners``); the glue between them stays eager.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from romav2_core import weights as weights_io
from romav2_core.config import RoMaV2Config
from romav2_core.dinov3 import DINOv3ViTL16
from romav2_core.geometry import (precision_from_params, precision_to_covariance,
                                  to_pixel_coordinates)
from romav2_core.local_correlation import resolve_impl
from romav2_core.matcher import CoarseMatcher
from romav2_core.normalization import imagenet_mean_std, imagenet_normalize
from romav2_core.precision import fp32_convolutions
from romav2_core.refiner import Refiners, displacement_scale_factor
from romav2_core.sampling import sample as sample_matches
from romav2_core.vgg import VGG19BNFeatures

ImageLike = Union[Tensor, np.ndarray]


@dataclass
class ImageFeatures:
    """Pair-independent features of a batch of images (the sequential-mode cache).

    ``coarse``: DINOv3 taps, 2 x ``[B x H_lr/16 x W_lr/16 x 1024]``;
    ``fine``: VGG19-BN ``{1, 2, 4: [B x H_lr/s x W_lr/s x C_s]}``;
    ``fine_hr``: the same at ``H_hr x W_hr``, or None without the HR pass.
    """

    coarse: list[Tensor]
    fine: dict[int, Tensor]
    fine_hr: Optional[dict[int, Tensor]]

    @property
    def batch_size(self) -> int:
        return self.coarse[0].shape[0]

    @classmethod
    def cat(cls, parts: list['ImageFeatures']) -> 'ImageFeatures':
        """The batch concatenation of ``parts`` (in order)."""
        return _cat_batches(parts)

    def __getitem__(self, index: slice) -> 'ImageFeatures':
        return ImageFeatures(
            coarse=[t[index] for t in self.coarse],
            fine={s: t[index] for s, t in self.fine.items()},
            fine_hr=None if self.fine_hr is None else {s: t[index]
                                                       for s, t in self.fine_hr.items()})


def _cat_batches(parts: list):
    """Concatenate, along the batch dim, the tensors of same-structured outputs (dicts, lists,
    ``ImageFeatures``; None stays None)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if first is None:
        return None
    if isinstance(first, ImageFeatures):
        return ImageFeatures(*(_cat_batches([getattr(p, f) for p in parts])
                               for f in ('coarse', 'fine', 'fine_hr')))
    if isinstance(first, dict):
        return type(first)((k, _cat_batches([p[k] for p in parts])) for k in first)
    if isinstance(first, list):
        return [_cat_batches(list(items)) for items in zip(*parts)]
    raise TypeError(f'cannot concatenate {type(first).__name__}')


def _resize(images: Tensor, H: int, W: int) -> Tensor:
    """The official input resize: bicubic, antialiased, aspect ratio not kept."""
    return F.interpolate(images, size=(H, W), mode='bicubic', align_corners=False,
                         antialias=True)


def _as_image_batch(image: ImageLike, device: torch.device) -> Tensor:
    """``[B x 3 x H x W]`` / ``[3 x H x W]`` tensor (uint8 or float, any device) or ``H x W x 3``
    array -> float32 BCHW in [0, 1] on ``device``.

    The tensor is moved as it is (uint8 moves a quarter of the float32 bytes; a pinned source
    copies asynchronously) and converted on ``device``.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f'arrays must be H x W x 3 RGB, got shape {image.shape}')
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, Tensor):
        raise TypeError(f'unsupported image type {type(image).__name__}')
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f'images must be [B x 3 x H x W], got {tuple(image.shape)}')
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f'images must be uint8 or floating point, got {image.dtype}')
    image = image.to(device, non_blocking=True)
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.float()


class RoMaV2(nn.Module):
    """RoMa v2 dense matcher; loads the official ``romav2.0.1.pt`` state dict unchanged.

    Build with ``RoMaV2.from_pretrained(...)`` (official weights) or ``RoMaV2.from_random(...)``
    (seeded random weights for tests); the constructor never downloads anything.
    """

    def __init__(self, cfg: Optional[RoMaV2Config] = None):
        super().__init__()
        self.cfg = cfg or RoMaV2Config()
        # Attribute names (and order) give the checkpoint's key prefixes f., matcher., ...
        self.f = DINOv3ViTL16()
        self.matcher = CoarseMatcher()
        self.refiners = Refiners()
        self.refiner_features = VGG19BNFeatures()
        if self.cfg.backbone_amp:
            self.f.to(self.cfg.torch_amp_dtype)  # the official stores DINOv3 in bf16
        if self.cfg.channels_last:
            self.set_conv_memory_format(torch.channels_last)
        # ImageNet statistics for both encoders' input, on the model's device. Constants, not
        # weights: non-persistent, so the state dict stays the checkpoint's 907 keys.
        mean, std = imagenet_mean_std()
        self.register_buffer('image_mean', mean, persistent=False)
        self.register_buffer('image_std', std, persistent=False)
        self.requires_grad_(False)
        self.eval()
        self._warned_tf32 = False
        #: Compiled callables of submodules by attribute name (``compile.compile_model``).
        self.compiled_parts: dict[str, Callable] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, weights: Optional[str] = None, setting: str = 'precise',
                        device: Union[str, torch.device] = 'cpu',
                        dtype: Optional[torch.dtype] = None, download: bool = True,
                        **overrides) -> 'RoMaV2':
        """The official checkpoint, strictly loaded (907 keys, names unchanged).

        ``weights``: a local path, or None for the torch hub cache, downloaded from the official
        release when absent (``download``); offline, ``weights.WeightsError`` names the URL and
        the cache path. ``dtype``: None = the official mixed precision (bf16), torch.float32 =
        all fp32, torch.bfloat16 / torch.float16 = that autocast dtype. ``overrides``: any
        ``RoMaV2Config`` field (e.g. ``H_lr=480``).
        """
        model = cls(_config(setting, dtype, overrides))
        path = weights_io.resolve_weights(weights, download=download)
        state = weights_io.load_state_dict(path, expected=model.state_dict())
        model.load_state_dict(state, strict=True)
        return _compiled_as_configured(model.to(device))

    @classmethod
    def from_random(cls, seed: int = 0, setting: str = 'turbo',
                    device: Union[str, torch.device] = 'cpu',
                    dtype: Optional[torch.dtype] = None, **overrides) -> 'RoMaV2':
        """Seeded random weights (the modules' default init); for tests and plumbing demos.
        The global RNG state is left untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(_config(setting, dtype, overrides))
        return _compiled_as_configured(model.to(device))

    def set_conv_memory_format(self, memory_format: torch.memory_format) -> None:
        """Layout of the conv-heavy parts (DPT head, VGG, refiners); activations follow it.
        DINOv3's patch embedding keeps the official layout, so its bf16 rounding does too.
        Only 4-D weights change; load_state_dict and .to(device) keep the layout."""
        for part in (self.matcher.head, self.refiners, self.refiner_features):
            part.to(memory_format=memory_format)

    # ----------------------------------------------- official attribute-style settings
    def apply_setting(self, setting: str) -> None:
        """Switch to a named preset's resolutions, direction and threshold (official API)."""
        self.cfg = self.cfg.with_setting(setting)

    def _set(self, **changes) -> None:
        self.cfg = self.cfg.replace(**changes)

    H_lr = property(lambda self: self.cfg.H_lr, lambda self, v: self._set(H_lr=v))
    W_lr = property(lambda self: self.cfg.W_lr, lambda self, v: self._set(W_lr=v))
    H_hr = property(lambda self: self.cfg.H_hr, lambda self, v: self._set(H_hr=v))
    W_hr = property(lambda self: self.cfg.W_hr, lambda self, v: self._set(W_hr=v))
    bidirectional = property(lambda self: self.cfg.bidirectional,
                             lambda self, v: self._set(bidirectional=bool(v)))
    threshold = property(lambda self: self.cfg.threshold, lambda self, v: self._set(threshold=v))

    @property
    def device(self) -> torch.device:
        return self.matcher.omega.device

    @property
    def output_hw(self) -> tuple[int, int]:
        if self.cfg.has_hr:
            return self.cfg.H_hr, self.cfg.W_hr
        return self.cfg.H_lr, self.cfg.W_lr

    # ------------------------------------------------------------------ precision policy
    def _amp(self, enabled: bool) -> Optional[torch.dtype]:
        return self.cfg.torch_amp_dtype if enabled else None

    def _check_matmul_precision(self) -> None:
        tf32 = torch.get_float32_matmul_precision() != 'highest' or (
            self.device.type == 'cuda' and torch.backends.cuda.matmul.allow_tf32)
        if tf32 and not self._warned_tf32:
            self._warned_tf32 = True
            warnings.warn('TF32 matmuls are enabled: RoMa v2 was trained and validated with '
                          'fp32 matmul precision "highest"; expect small sub-pixel deviations',
                          RuntimeWarning, stacklevel=3)

    def _chunks(self, batch: int, per_pair: int = 1) -> list[slice]:
        """The batch slices run one after the other: ``cfg.cpu_max_pairs`` pairs (times
        ``per_pair`` items) at a time on the CPU, everything at once elsewhere."""
        size = self.cfg.cpu_max_pairs * per_pair
        if self.device.type != 'cpu' or size <= 0 or batch <= size:
            return [slice(None)]
        return [slice(i, i + size) for i in range(0, batch, size)]

    def _run(self, name: str, *args, **kwargs):
        """Call the submodule ``name`` (``f``, ``refiner_features``, ``matcher``, ``refiners``):
        its compiled form when ``compile.compile_model`` made one, else the module."""
        part = self.compiled_parts.get(name)
        return (getattr(self, name) if part is None else part)(*args, **kwargs)

    # ------------------------------------------------------------------------ encoding
    @torch.inference_mode()
    def encode(self, images: ImageLike) -> ImageFeatures:
        """Features of ``images`` (``[B x 3 x H x W]`` float in [0, 1] or uint8, any size and
        device; or one ``H x W x 3`` array), resized to the working resolution(s) as ``match``
        does."""
        images = _as_image_batch(images, self.device)
        chunks = self._chunks(images.shape[0], per_pair=2)
        if len(chunks) > 1:
            return ImageFeatures.cat([self.encode(images[c]) for c in chunks])
        lr = _resize(images, self.cfg.H_lr, self.cfg.W_lr)
        hr = _resize(images, self.cfg.H_hr, self.cfg.W_hr) if self.cfg.has_hr else None
        with fp32_convolutions(self.device.type):
            return self._encode_resized(lr, hr)

    def _normalize(self, images: Tensor) -> Tensor:
        return imagenet_normalize(images, self.image_mean, self.image_std)

    def _encode_resized(self, lr: Tensor, hr: Optional[Tensor]) -> ImageFeatures:
        self._check_matmul_precision()
        vgg_amp = self._amp(self.cfg.vgg_amp_on_cuda and lr.device.type == 'cuda')
        lr = self._normalize(lr)  # once, for both encoders
        coarse = self._backbone(lr)
        fine = self._run('refiner_features', lr, amp_dtype=vgg_amp, normalized=True)
        fine_hr = None if hr is None else self._run(
            'refiner_features', self._normalize(hr), amp_dtype=vgg_amp, normalized=True)
        return ImageFeatures(coarse=coarse, fine=fine, fine_hr=fine_hr)

    def _backbone(self, lr: Tensor) -> list[Tensor]:
        """DINOv3 taps of normalised images. Under ``amp_dtype='fp16'`` a non-finite tap (a
        ViT-L activation beyond fp16's 65504) switches the backbone to fp32 for good, with a
        warning, and recomputes: fp16 can never return overflowed features silently."""
        def taps() -> list[Tensor]:
            return self._run('f', lr, amp_dtype=self._amp(self.cfg.backbone_amp),
                             stop_early=self.cfg.skip_unused_blocks, normalized=True)
        coarse = taps()
        if self.cfg.backbone_amp and self.cfg.amp_dtype == 'fp16' and not bool(
                torch.stack([torch.isfinite(t).all() for t in coarse]).all()):
            warnings.warn('DINOv3 overflowed in fp16 (non-finite features): running the '
                          'backbone in fp32 from now on', RuntimeWarning, stacklevel=4)
            self.cfg = self.cfg.replace(backbone_amp=False)
            self.f.float()
            coarse = taps()
        return coarse

    # ------------------------------------------------------------------------ matching
    def _predict(self, feats_A: ImageFeatures, feats_B: ImageFeatures) -> OrderedDict:
        """The official ``forward`` predictions dict from two images' features."""
        cfg = self.cfg
        preds = OrderedDict()
        # Resolved here, eagerly (it may log and load cuda_ext), not inside compiled code.
        local_corr = resolve_impl(cfg.local_corr, self.device)
        m = self._run('matcher', feats_A.coarse, feats_B.coarse, bidirectional=cfg.bidirectional,
                      amp_dtype=self._amp(cfg.matcher_amp),
                      head_amp_dtype=self._amp(cfg.dpt_amp), rope_bf16=cfg.mv_rope_bf16)
        preds['matcher'] = m
        state = {'AB': (m['warp_AB'], m['confidence_AB'])}
        if cfg.bidirectional:
            state['BA'] = (m['warp_BA'], m['confidence_BA'])
        stages = [(feats_A.fine, feats_B.fine, cfg.H_lr, cfg.W_lr, False)]
        if feats_A.fine_hr is not None and feats_B.fine_hr is not None:
            stages.append((feats_A.fine_hr, feats_B.fine_hr, cfg.H_hr, cfg.W_hr, True))
        for fine_A, fine_B, H, W, hr_pass in stages:
            scale = displacement_scale_factor(H, W, device=self.device)
            for direction, (warp, conf) in list(state.items()):
                src, dst = (fine_A, fine_B) if direction == 'AB' else (fine_B, fine_A)
                out = self._run('refiners', src, dst, warp, conf, scale, hr_pass=hr_pass,
                                amp_dtype=self._amp(cfg.refiner_amp),
                                local_corr_impl=local_corr)
                for stride, (w, c) in out.items():
                    preds[f'refiner_{stride}_{direction}'] = {'warp': w, 'confidence': c}
                state[direction] = out[1]
        for direction in ('AB', 'BA'):
            warp, conf = state.get(direction, (None, None))
            preds[f'warp_{direction}'] = warp
            preds[f'confidence_{direction}'] = conf
        return preds

    def _outputs(self, preds: dict) -> dict[str, Optional[Tensor]]:
        """``match`` outputs from forward predictions (overlap, precision, covariance)."""
        out = {}
        for direction in ('AB', 'BA'):
            warp, conf = preds[f'warp_{direction}'], preds[f'confidence_{direction}']
            if warp is None:
                out.update({f'{k}_{direction}': None for k in
                            ('warp', 'confidence', 'overlap', 'precision', 'covariance')})
                continue
            overlap = conf[..., :1].sigmoid()
            if self.cfg.threshold is not None:
                overlap = torch.where(overlap > self.cfg.threshold, torch.ones_like(overlap),
                                      overlap)
            precision = precision_from_params(conf[..., 1:4])
            out.update({f'warp_{direction}': warp, f'confidence_{direction}': conf,
                        f'overlap_{direction}': overlap, f'precision_{direction}': precision,
                        f'covariance_{direction}': precision_to_covariance(precision)})
        return out

    @torch.inference_mode()
    def match_features(self, feats_A: ImageFeatures, feats_B: ImageFeatures
                       ) -> dict[str, Optional[Tensor]]:
        """Match two images' cached features (see the module docstring for the outputs)."""
        chunks = self._chunks(feats_A.batch_size)
        if len(chunks) > 1:
            return _cat_batches([self.match_features(feats_A[c], feats_B[c]) for c in chunks])
        with fp32_convolutions(self.device.type):
            return self._outputs(self._predict(feats_A, feats_B))

    @torch.inference_mode()
    def forward(self, img_A_lr: Tensor, img_B_lr: Tensor, img_A_hr: Optional[Tensor] = None,
                img_B_hr: Optional[Tensor] = None) -> OrderedDict:
        """The official forward: images already at the working resolution(s), ``[B x 3 x H x W]``
        in [0, 1]. Returns the official predictions dict (``matcher``,
        ``refiner_{4,2,1}_{AB,BA}``, ``warp_AB``, ``confidence_AB``, ``warp_BA``,
        ``confidence_BA``)."""
        chunks = self._chunks(img_A_lr.shape[0])
        if len(chunks) > 1:
            return _cat_batches([self.forward(img_A_lr[c], img_B_lr[c],
                                              None if img_A_hr is None else img_A_hr[c],
                                              None if img_B_hr is None else img_B_hr[c])
                                 for c in chunks])
        with fp32_convolutions(self.device.type):
            if not self.cfg.batch_pair or img_A_lr.shape != img_B_lr.shape:
                return self._predict(self._encode_resized(img_A_lr, img_A_hr),
                                     self._encode_resized(img_B_lr, img_B_hr))
            both = self._encode_resized(
                torch.cat((img_A_lr, img_B_lr)),
                None if img_A_hr is None or img_B_hr is None
                else torch.cat((img_A_hr, img_B_hr)))
            B = img_A_lr.shape[0]
            return self._predict(both[:B], both[B:])

    @torch.inference_mode()
    def match(self, img_A: ImageLike, img_B: ImageLike) -> dict[str, Optional[Tensor]]:
        """Match two images (or batches) of any size; A and B share one encoder batch when
        their sizes agree (and ``cfg.batch_pair``)."""
        img_A = _as_image_batch(img_A, self.device)
        img_B = _as_image_batch(img_B, self.device)
        chunks = self._chunks(img_A.shape[0])
        if len(chunks) > 1 and img_B.shape[0] == img_A.shape[0]:
            return _cat_batches([self.match(img_A[c], img_B[c]) for c in chunks])
        if self.cfg.batch_pair and img_A.shape == img_B.shape:
            both = self.encode(torch.cat((img_A, img_B)))
            B = img_A.shape[0]
            return self.match_features(both[:B], both[B:])
        return self.match_features(self.encode(img_A), self.encode(img_B))

    # ------------------------------------------------------------------------- helpers
    def sample(self, preds: dict, num: int, generator: Optional[torch.Generator] = None
               ) -> list[dict]:
        """Certainty-balanced sparse matches per batch element (``sampling.sample``)."""
        return sample_matches(preds, num, generator=generator)

    @staticmethod
    def to_pixel_coordinates(matches: Tensor, H_A: int, W_A: int, H_B: int, W_B: int,
                             convention: str = 'official') -> tuple[Tensor, Tensor]:
        """``[..., 4]`` normalised matches to pixels of A and B. ``convention='official'``
        puts pixel centres at +0.5 (as the official function); ``'opencv'`` at integers."""
        return (to_pixel_coordinates(matches[..., :2], H_A, W_A, convention),
                to_pixel_coordinates(matches[..., 2:], H_B, W_B, convention))


def _compiled_as_configured(model: RoMaV2) -> RoMaV2:
    """``cfg.compile`` applied (lazily: torch.compile compiles on the first call)."""
    if model.cfg.compile != 'off':
        from romav2_core.compile import compile_model
        compile_model(model, model.cfg.compile)
    return model


def _config(setting: str, dtype: Optional[torch.dtype], overrides: dict) -> RoMaV2Config:
    """The preset, then the ``dtype`` policy, then explicit field overrides (which win)."""
    cfg = RoMaV2Config.from_setting(setting)
    if dtype == torch.float32:
        cfg = cfg.all_fp32()
    elif dtype is not None:
        names = {torch.bfloat16: 'bf16', torch.float16: 'fp16'}
        if dtype not in names:
            raise ValueError(f'dtype must be None, float32, bfloat16 or float16, got {dtype}')
        cfg = cfg.replace(amp_dtype=names[dtype])
    return cfg.replace(**overrides)
