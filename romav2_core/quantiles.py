"""Quantiles of the finite part of a tensor, where the tensor is.

``torch.nanquantile`` sorts; on a CPU torch's sort of a few thousand floats costs a few
hundred microseconds, more than the rest of a stereo pair's checks. There the quantiles come
from selection (``kthvalue``) instead; on an accelerator ``nanquantile`` stays, as it does not
wait for the device.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def nan_quantiles(values: Tensor, q: Sequence[float]) -> Tensor:
    """``[len(q)]`` quantiles ``q`` (in [0, 1]) of the non-NaN entries of ``values`` (any
    shape), interpolated linearly between order statistics as ``torch.nanquantile`` and
    numpy's ``nanpercentile`` do; NaN where every entry is NaN."""
    flat = values.reshape(-1)
    if flat.device.type != 'cpu':
        return torch.nanquantile(flat, flat.new_tensor(list(q)))
    x = flat[~torch.isnan(flat)]
    n = x.shape[0]
    if n == 0:
        return flat.new_full((len(q),), float('nan'))
    out = []
    for p in q:
        position = p * (n - 1)
        below = math.floor(position)
        value = torch.kthvalue(x, below + 1).values
        if below + 1 < n:
            value = torch.lerp(value, torch.kthvalue(x, below + 2).values, position - below)
        out.append(value)
    return torch.stack(out)
