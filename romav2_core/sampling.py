"""Certainty-balanced sampling of sparse matches from dense RoMa v2 predictions.

The algorithm is the official ``RoMaV2.sample`` (2.0.1): draw ``4 n`` candidates with
probability proportional to the overlap (zero near the border), estimate their density with a
Gaussian KDE (std 0.1 in normalised 4-D match space, computed in fp16 as the official does),
and draw ``n`` of them with probability ``1 / (density + 1)`` (``1e-7`` where density < 10).

Deliberate differences from the official function:
* it works per batch element (the official uses element 0 only);
* precisions are returned as full 2x2 matrices for both sides in both modes (the official
  unidirectional path returns the two *rows* of P_AB instead);
* randomness comes from an optional ``torch.Generator``, not only the global RNG.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from romav2_core.geometry import normalized_grid

KDE_STD = 0.1
EXPANSION = 4
MIN_DENSITY = 10.0


def kde_density(x: Tensor, std: float = KDE_STD, half: bool = True) -> Tensor:
    """Gaussian KDE of ``[N x D]`` points evaluated at themselves, ``[N]``."""
    if half:
        x = x.half()
    return (-(torch.cdist(x, x) ** 2) / (2 * std ** 2)).exp().sum(dim=-1).float()


def _sample_precision(precision: Tensor, warp: Tensor) -> Tensor:
    """Bilinearly sample a ``[H x W x 2 x 2]`` precision map at normalised ``[H x W x 2]``."""
    H, W = precision.shape[:2]
    field = precision.reshape(1, H, W, 4).permute(0, 3, 1, 2)
    out = F.grid_sample(field, warp[None], mode='bilinear', align_corners=False)
    return out[0].permute(1, 2, 0).reshape(*warp.shape[:2], 2, 2)


def _candidates(preds: dict, b: int):
    """All dense matches of batch element ``b``: matches [M x 4] (x_A, y_A, x_B, y_B),
    certainty [M], precision of A side [M x 2 x 2] or None, precision of B side [M x 2 x 2]."""
    warp_AB = preds['warp_AB'][b]
    H, W = warp_AB.shape[:2]
    grid = normalized_grid(1, H, W, device=warp_AB.device, dtype=warp_AB.dtype)[0]
    matches = [torch.cat((grid, warp_AB), -1).reshape(-1, 4)]
    certainty = [preds['overlap_AB'][b].reshape(-1)]
    prec_AB = preds['precision_AB'][b]
    prec_B = [prec_AB.reshape(-1, 2, 2)]
    prec_A = None
    if preds.get('warp_BA') is not None:
        warp_BA, prec_BA = preds['warp_BA'][b], preds['precision_BA'][b]
        matches.append(torch.cat((warp_BA, grid), -1).reshape(-1, 4))
        certainty.append(preds['overlap_BA'][b].reshape(-1))
        # The BA map predicts positions in A, so the A side of a forward match takes P_BA
        # sampled at the match's B position (the official rule); symmetrically for B.
        prec_A = torch.cat((_sample_precision(prec_BA, warp_AB).reshape(-1, 2, 2),
                            prec_BA.reshape(-1, 2, 2)))
        prec_B.append(_sample_precision(prec_AB, warp_BA).reshape(-1, 2, 2))
    return torch.cat(matches), torch.cat(certainty), prec_A, torch.cat(prec_B), H


def sample(preds: dict, num: int, generator: Optional[torch.Generator] = None) -> list[dict]:
    """Sample ``num`` balanced matches per batch element.

    ``preds`` holds ``warp_AB [B x H x W x 2]``, ``overlap_AB [B x H x W x 1]``,
    ``precision_AB [B x H x W x 2 x 2]`` and, when bidirectional, the ``*_BA`` keys.
    Returns one dict per batch element with ``matches [n x 4]`` (x_A, y_A, x_B, y_B normalised),
    ``certainty [n]``, ``precision_A [n x 2 x 2]`` (None when unidirectional: A-side points are
    grid centres, exact) and ``precision_B [n x 2 x 2]`` (px^-2 of the prediction grid).
    """
    out = []
    for b in range(preds['warp_AB'].shape[0]):
        matches, certainty, prec_A, prec_B, H = _candidates(preds, b)
        inside = matches.abs().amax(dim=-1).le(1 - 1 / H)
        weights = certainty.float() * inside
        if int((weights > 0).sum()) == 0:
            out.append(dict(matches=matches[:0], certainty=certainty[:0],
                            precision_A=None if prec_A is None else prec_A[:0],
                            precision_B=prec_B[:0]))
            continue
        k = min(EXPANSION * num, int((weights > 0).sum()))
        idx = torch.multinomial(weights, k, replacement=False, generator=generator)
        density = kde_density(matches[idx])
        p = 1 / (density + 1)
        p[density < MIN_DENSITY] = 1e-7
        keep = idx[torch.multinomial(p, min(num, k), replacement=False, generator=generator)]
        out.append(dict(matches=matches[keep], certainty=certainty[keep],
                        precision_A=None if prec_A is None else prec_A[keep],
                        precision_B=prec_B[keep]))
    return out


#: Cells per side of the grid that :func:`balanced_indices` spreads matches over.
BALANCE_CELLS = 32


def balanced_indices(points_a, certainty, num: int, rng, hw_a: tuple[int, int]):
    """Indices of ``num`` of the ``[N x 2]`` matches (``points_a`` in OpenCV px of A, numpy):
    drawn with probability proportional to ``certainty``, then thinned to an even spread over
    A (inverse density on a ``BALANCE_CELLS`` square grid; the idea of the KDE balancing
    above at a fraction of its cost, for the node's per-pair sampling). All of them when there
    are at most ``num``. ``rng``: a ``numpy.random.Generator``."""
    n = len(certainty)
    if n <= num:
        return np.arange(n)
    p = certainty / certainty.sum()
    cand = rng.choice(n, size=min(EXPANSION * num, n), replace=False, p=p)
    cells = BALANCE_CELLS
    cx = np.clip((points_a[cand, 0] / hw_a[1] * cells).astype(int), 0, cells - 1)
    cy = np.clip((points_a[cand, 1] / hw_a[0] * cells).astype(int), 0, cells - 1)
    cell = cy * cells + cx
    density = np.bincount(cell, minlength=cells * cells)[cell]
    w = 1.0 / density
    return cand[rng.choice(len(cand), size=num, replace=False, p=w / w.sum())]
