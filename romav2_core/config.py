"""Configuration of RoMa v2: one frozen dataclass and the named settings presets.

Every field maps one-to-one onto a ROS parameter of the node (same name), so the node, the
offline replay and the benchmarks describe a model the same way.

Settings (the official ``apply_setting`` table of romav2 2.0.1):

=========  ==========  ===========  =============  =========
setting    lr (H x W)  hr (H x W)   bidirectional  threshold
=========  ==========  ===========  =============  =========
turbo      320 x 320   --           False          None
fast       512 x 512   --           False          None
base       640 x 640   --           False          None
precise    800 x 800   1280 x 1280  True           None
mega1500   800 x 800   1024 x 1024  True           0.05
=========  ==========  ===========  =============  =========
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

SETTINGS: dict[str, dict] = {
    'turbo': dict(H_lr=320, W_lr=320, H_hr=None, W_hr=None, bidirectional=False, threshold=None),
    'fast': dict(H_lr=512, W_lr=512, H_hr=None, W_hr=None, bidirectional=False, threshold=None),
    'base': dict(H_lr=640, W_lr=640, H_hr=None, W_hr=None, bidirectional=False, threshold=None),
    'precise': dict(H_lr=800, W_lr=800, H_hr=1280, W_hr=1280, bidirectional=True,
                    threshold=None),
    # The paper's MegaDepth/ScanNet/WxBS/SatAst evaluation setting.
    'mega1500': dict(H_lr=800, W_lr=800, H_hr=1024, W_hr=1024, bidirectional=True,
                     threshold=0.05),
}

#: Names accepted by ``amp_dtype``.
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}

#: Precision policies (the node's ``precision`` parameter): the official mixed precision with
#: bf16 or fp16 autocast, all-fp32, or ``auto`` = bf16 where the device has native bf16 math
#: (the official policy) and fp32 elsewhere (faster there: bf16 is emulated on AVX2 CPUs).
PRECISIONS = ('auto', 'bf16', 'fp16', 'fp32')

#: Implementations of the refiners' local correlation (see ``local_correlation.py``).
LOCAL_CORR_IMPLS = ('auto', 'cuda', 'torch')

#: ``torch.compile`` modes (the node's ``compile`` parameter; see ``compile.py``): ``off`` runs
#: eagerly; the others are ``torch.compile``'s ``mode`` (``default`` = its default).
COMPILE_MODES = ('off', 'default', 'max-autotune', 'reduce-overhead')

#: The fields a settings preset sets; every other field is kept by ``apply_setting``.
PRESET_FIELDS = ('setting', 'H_lr', 'W_lr', 'H_hr', 'W_hr', 'bidirectional', 'threshold')

#: The model's spatial granularity: DINOv3 patches are 16 px and the refiners need
#: resolutions divisible by 16 (stride-4 features of a 16-px patch grid).
RESOLUTION_MULTIPLE = 16


def resolve_precision(precision: str, device='cpu') -> str:
    """One of ``PRECISIONS`` with ``auto`` replaced by what it means on the configured
    ``device``: bf16 where it has native bf16 math, else fp32 (table: ``precision.py``)."""
    from romav2_core import precision as precision_policy
    if precision not in PRECISIONS:
        raise ValueError(f'precision={precision!r}: one of {PRECISIONS}')
    if precision == 'auto':
        return 'bf16' if precision_policy.fast_bf16(device) else 'fp32'
    return precision


@dataclass(frozen=True)
class RoMaV2Config:
    """Everything that defines a RoMa v2 model run; immutable.

    Resolutions are in pixels of the model input (images are resized, aspect ratio not kept,
    exactly as the official ``match``). ``H_hr``/``W_hr`` = None disables the second,
    high-resolution refinement pass.

    Precision: the official 2.0.1 policy is reproduced by the defaults: DINOv3 weights in bf16
    and bf16 autocast around DINOv3, the multi-view transformer, the DPT head and the refiner
    conv blocks; VGG19-BN under autocast on CUDA only. Each ``*_amp`` flag switches one
    component to plain fp32 (all False = an all-fp32 run, except the mv-ViT RoPE, which the
    official code always computes in bf16 unless ``mv_rope_bf16`` is False too).
    """

    setting: str = 'precise'
    H_lr: int = 800
    W_lr: int = 800
    H_hr: Optional[int] = 1280
    W_hr: Optional[int] = 1280
    bidirectional: bool = True
    threshold: Optional[float] = None

    amp_dtype: str = 'bf16'
    backbone_amp: bool = True
    matcher_amp: bool = True
    dpt_amp: bool = True
    refiner_amp: bool = True
    vgg_amp_on_cuda: bool = True
    mv_rope_bf16: bool = True

    local_corr: str = 'auto'
    #: Stop DINOv3 after the last tapped block (identical outputs, ~25 % less backbone time).
    skip_unused_blocks: bool = True
    #: Run A and B through DINOv3 and VGG as one batch (faster). Under bf16 autocast the batch
    #: size changes the matmul blocking and so the rounding (~1 % in the DINOv3 tap norms on an
    #: AMX CPU, propagated downstream); False encodes one image at a time, as the official.
    batch_pair: bool = True
    #: Keep the DPT, VGG and refiner conv weights (and so activations) in channels-last
    #: layout; read at construction. Same results up to float summation order (~1e-7 to 1e-6
    #: relative); 1.12x faster per fp32 ``base`` pair on a 2-core Xeon CPU, where oneDNN's NHWC
    #: convolutions of these shapes are 1.5-5x faster than NCHW.
    channels_last: bool = True
    #: On the CPU, a batch of more pairs is run this many pairs at a time (0: all at once;
    #: ``encode`` takes twice as many images). 2-core Xeon, ``base`` 640², batch 8: x1.6
    #: throughput at 1, because batches of one pair keep most activations below glibc's 32 MB
    #: mmap threshold (a larger tensor is page-faulted in afresh on every allocation: 19 GB of
    #: zero-filled pages per forward at batch 2) and in cache. Each pair's result is then the
    #: one it gets alone; under bf16 autocast that is a different matmul blocking (the rounding
    #: effect of ``batch_pair``) than one big batch, in fp32 only summation order. Ignored on GPUs,
    #: whose throughput needs the big batch.
    cpu_max_pairs: int = 1
    #: ``torch.compile`` of the backbone, VGG, matcher and refiners (one of ``COMPILE_MODES``);
    #: applied by ``compile.compile_model`` (``from_pretrained``/``from_random`` call it).
    compile: str = 'off'

    def __post_init__(self):
        for name in ('H_lr', 'W_lr', 'H_hr', 'W_hr'):
            value = getattr(self, name)
            if name.endswith('hr') and value is None:
                continue
            if not isinstance(value, int) or value <= 0 or value % RESOLUTION_MULTIPLE:
                raise ValueError(f'{name}={value!r}: must be a positive multiple of '
                                 f'{RESOLUTION_MULTIPLE}')
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f'amp_dtype={self.amp_dtype!r}: one of {sorted(AMP_DTYPES)}')
        if self.local_corr not in LOCAL_CORR_IMPLS:
            raise ValueError(f'local_corr={self.local_corr!r}: one of {LOCAL_CORR_IMPLS}')
        if not isinstance(self.cpu_max_pairs, int) or self.cpu_max_pairs < 0:
            raise ValueError(f'cpu_max_pairs={self.cpu_max_pairs!r}: an int >= 0')
        if self.compile not in COMPILE_MODES:
            raise ValueError(f'compile={self.compile!r}: one of {COMPILE_MODES}')
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f'threshold={self.threshold!r}: must be in [0, 1] or None')

    @classmethod
    def from_setting(cls, setting: str = 'precise', **overrides) -> 'RoMaV2Config':
        """The preset ``setting`` with any field overridden by keyword."""
        if setting not in SETTINGS:
            raise ValueError(f'unknown setting {setting!r}; one of {sorted(SETTINGS)}')
        return cls(**{'setting': setting, **SETTINGS[setting], **overrides})

    def replace(self, **changes) -> 'RoMaV2Config':
        return dataclasses.replace(self, **changes)

    def with_setting(self, setting: str) -> 'RoMaV2Config':
        """The preset ``setting`` with every non-preset field (precision, speed switches,
        compile mode, ...) of this config kept."""
        kept = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in PRESET_FIELDS}
        return RoMaV2Config.from_setting(setting, **kept)

    @property
    def torch_amp_dtype(self) -> torch.dtype:
        return AMP_DTYPES[self.amp_dtype]

    @property
    def has_hr(self) -> bool:
        """Whether the HR pass runs. H_hr and W_hr may be set one at a time (the official
        attribute style), but a run with only one of them set is an error."""
        if (self.H_hr is None) != (self.W_hr is None):
            raise ValueError(f'H_hr={self.H_hr} and W_hr={self.W_hr}: set both or neither')
        return self.H_hr is not None

    def with_precision(self, precision: str, device='cpu') -> 'RoMaV2Config':
        """This config under one of ``PRECISIONS`` for ``device``."""
        precision = resolve_precision(precision, device)
        if precision == 'fp32':
            return self.all_fp32()
        return self.replace(amp_dtype=precision)

    def all_fp32(self) -> 'RoMaV2Config':
        """This config with every autocast region and the bf16 mv-ViT RoPE switched off."""
        return self.replace(backbone_amp=False, matcher_amp=False, dpt_amp=False,
                            refiner_amp=False, vgg_amp_on_cuda=False, mv_rope_bf16=False)
