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
