"""The one autocast helper of the package: a region of a given compute dtype, or none at all."""
from __future__ import annotations

from typing import Optional

import torch


def autocast_region(device_type: str, dtype: Optional[torch.dtype]) -> torch.autocast:
    """``torch.autocast`` to ``dtype``, or an autocast-*disabled* region when ``dtype`` is None.

    Mirrors the reference's ``torch.autocast(..., enabled=enable_amp)``: a disabled region also
    switches off any autocast the caller may have opened, so "no amp" really means full precision.
    """
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has native bf16 math. Where it does not (e.g. an AVX2-only CPU), bf16
    GEMMs are emulated and several times *slower* than fp32."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False
