"""Precision: the one autocast helper, the native-bf16 decision, and fp32 convolutions on CUDA.

The ``precision:=auto`` choice is a pure function of a :class:`DeviceDescription` (type, index,
CUDA compute capability, CPU ISA flags), so the whole table below is tested without the
hardware; :func:`describe_device` fills the description from the *configured* device
(``cuda:1`` is asked about GPU 1, not about the current one).

==========================================  ==============  ===============================
device                                      native bf16     ``auto`` runs
==========================================  ==============  ===============================
CPU with AVX512-BF16 or AMX (Cooper Lake+)  yes             bf16 (the official policy)
CPU with AVX2 / AVX-512 only                no (emulated)   fp32
CUDA sm_70 / sm_72 / sm_75 (V100, Xavier,   no              fp32 (``fp16`` is the fast
T4)                                                         opt-in there)
CUDA sm_80 / 86 / 87 / 89 / 90 (A100,       yes             bf16
Orin, L4, H100/H200)
anything else (MPS, ...)                    no              fp32
==========================================  ==============  ===============================

Why not ``torch.cuda.is_bf16_supported()``: it answers True on Volta/Turing (bf16 is emulated
there, through fp32) and it looks at the current device, not the configured one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

#: bf16 tensor cores: Ampere (sm_80) and later.
CUDA_BF16_MIN_CAPABILITY = (8, 0)
#: CPU ISA extensions with bf16 dot-product hardware (torch.cpu probe names).
CPU_BF16_ISA = frozenset({'avx512_bf16', 'amx_tile'})


@dataclass(frozen=True)
class DeviceDescription:
    """What the precision choice needs to know about one torch device.

    ``compute_capability``: (major, minor) of a CUDA device, None when unknown (CUDA not
    available). ``cpu_isa``: the CPU's relevant ISA flags (``avx2``, ``avx512``,
    ``avx512_bf16``, ``amx_tile``, ``amx_fp16``). ``mkldnn_bf16``: oneDNN's bf16 kernels
    are usable (needed on top of the ISA).
    """

    type: str
    index: Optional[int] = None
    compute_capability: Optional[tuple[int, int]] = None
    cpu_isa: frozenset = frozenset()
    mkldnn_bf16: bool = False
    name: str = ''


def native_bf16(device: DeviceDescription) -> bool:
    """Whether bf16 math runs on dedicated hardware (else it is emulated and slower than fp32)."""
    if device.type == 'cuda':
        return (device.compute_capability is not None
                and tuple(device.compute_capability) >= CUDA_BF16_MIN_CAPABILITY)
    if device.type == 'cpu':
        return device.mkldnn_bf16 and bool(device.cpu_isa & CPU_BF16_ISA)
    return False


def choose_precision(precision: str, device: DeviceDescription) -> str:
    """``precision`` with ``auto`` replaced by what it means on ``device`` (module table)."""
    if precision != 'auto':
        return precision
    return 'bf16' if native_bf16(device) else 'fp32'


def describe_device(device: torch.device | str) -> DeviceDescription:
    """The description of the configured ``device`` (queries that device, not the current one)."""
    device = torch.device(device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            return DeviceDescription('cuda', device.index)
        index = torch.cuda.current_device() if device.index is None else device.index
        return DeviceDescription('cuda', index, tuple(torch.cuda.get_device_capability(index)),
                                 name=torch.cuda.get_device_name(index))
    if device.type == 'cpu':
        return DeviceDescription('cpu', cpu_isa=_cpu_isa(), mkldnn_bf16=_mkldnn_bf16())
    return DeviceDescription(device.type, device.index)


def fast_bf16(device: torch.device | str) -> bool:
    """Whether the configured ``device`` has native bf16 math (see the module table)."""
    return native_bf16(describe_device(device))


def _cpu_isa() -> frozenset:
    probes = {'avx2': '_is_avx2_supported', 'avx512': '_is_avx512_supported',
              'avx512_bf16': '_is_avx512_bf16_supported', 'amx_tile': '_is_amx_tile_supported',
              'amx_fp16': '_is_amx_fp16_supported'}
    found = set()
    for flag, probe in probes.items():
        try:
            if getattr(torch.cpu, probe)():
                found.add(flag)
        except (AttributeError, RuntimeError):
            pass
    return frozenset(found)


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_region(device_type: str, dtype: Optional[torch.dtype]) -> torch.autocast:
    """``torch.autocast`` to ``dtype``, or an autocast-*disabled* region when ``dtype`` is None.

    Mirrors the reference's ``torch.autocast(..., enabled=enable_amp)``: a disabled region also
    switches off any autocast the caller may have opened, so "no amp" really means full precision.
    """
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@contextlib.contextmanager
def fp32_convolutions(device_type: str) -> Iterator[None]:
    """On CUDA: cuDNN convolutions in IEEE fp32 (no TF32) for the duration; elsewhere a no-op.

    cuDNN allows TF32 for fp32 convolutions by default (unlike matmuls), which would put a
    10-bit mantissa into the parts the official policy keeps in fp32 (the refiners' heads and
    embeddings, the DPT's last convolutions, VGG under ``precision:=fp32``). The setting is
    process-global while the region is open; the model's worker thread is its only user.
    """
    if device_type != 'cuda':
        yield
        return
    cudnn = torch.backends.cudnn
    try:
        before = cudnn.allow_tf32
    except RuntimeError:  # the caller set conv/rnn differently with the per-op API
        before = None
    if before is not None:  # the legacy flag keeps the per-op flags consistent
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = before
        return
    before_conv = cudnn.conv.fp32_precision
    cudnn.conv.fp32_precision = 'ieee'
    try:
        yield
    finally:
        cudnn.conv.fp32_precision = before_conv
