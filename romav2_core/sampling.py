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

import math
from typing import Callable, Optional

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


#: Cells per side of the grid that :func:`balanced_sample` spreads matches over.
BALANCE_CELLS = 32
#: On a CPU, draws of ``k`` among more than this many times ``k`` weights pre-select keys.
PREFILTER = 8


#: Flat cell indices ``[n]`` -> which of those cells may be drawn ``[n]`` bool.
UsableAt = Callable[[Tensor], Tensor]
#: Every this many-th cell estimates the usable weight (see below).
SHARE_STRIDE = 61


def _weighted_without_replacement(weights: Tensor, k: int, generator: torch.Generator,
                                  usable_at: Optional[UsableAt] = None
                                  ) -> tuple[Tensor, Tensor]:
    """``k`` indices drawn without replacement with probability proportional to ``weights``
    ``[N]`` (negative ones count as 0) among the cells that ``usable_at`` admits (all without
    it) (Efraimidis-Spirakis:
    the ``k`` smallest of ``E_i / w_i``, ``E_i ~ Exp(1)``, the same distribution as drawing
    one at a time), and which of them are real draws: where fewer than ``k`` usable weights
    are positive the rest have infinite keys (False). Fixed shapes, so nothing waits for the
    device."""
    n = weights.shape[0]
    if weights.device.type == 'cpu' and PREFILTER * k < n:
        # On a CPU a random number and a top-k over every cell cost more than everything
        # else here, and so does deciding which cells are usable: draw only the keys below
        # a level tau that about 2 k usable cells pass (the usable weight estimated on every
        # SHARE_STRIDE-th cell: tau only sets how many candidates come), keep the usable ones
        # among them, then take the k smallest -- the same k unless fewer than k passed.
        probe = torch.arange(0, n, SHARE_STRIDE, device=weights.device)
        w = weights.index_select(0, probe).clamp_min(0)
        if usable_at is not None:
            w = w[usable_at(probe)]
        total = float(w.sum()) * n / probe.shape[0]
        found = _keys_below(weights, 2 * k / max(total, 1e-30), generator)
        if found is not None:
            cand, keys = found
            if usable_at is not None:
                ok = usable_at(cand)
                cand, keys = cand[ok], keys[ok]
            if cand.shape[0] >= k:
                keys, pick = torch.topk(keys, k, largest=False, sorted=False)
                return cand[pick], torch.isfinite(keys)
    weights = weights.clamp_min(0)
    if usable_at is not None:
        weights = torch.where(usable_at(torch.arange(n, device=weights.device)), weights, 0.0)
    u = torch.rand(weights.shape, generator=generator, device=weights.device)
    keys = -torch.log1p(-u) / weights            # E / w; w = 0 -> inf (never drawn)
    keys, idx = torch.topk(keys, k, largest=False, sorted=False)
    return idx, torch.isfinite(keys)


def _keys_below(weights: Tensor, tau: float, generator: torch.Generator):
    """The cells with ``E_i / w_i < tau`` and their keys, as :func:`_weighted_without_replacement`
    would draw them, without a random number per cell (None when too many cells pass for
    that to pay). Cell i is in with probability ``q_i = 1 - exp(-tau w_i)`` (never when
    ``w_i <= 0``), independently:
    candidates come at the highest such rate ``q`` (a Bernoulli process, drawn as geometric
    gaps), each kept with ``q_i / q``; a kept cell's ``E_i`` is Exp(1) conditioned below
    ``tau w_i``: ``-log(1 - r q_i)``, ``r`` uniform."""
    n = weights.shape[0]
    q = -math.expm1(-tau * float(weights.max()))
    if not 0 < q < 0.5:
        return None
    log_miss = math.log1p(-q)
    expected = n * q
    batch = int(expected + 6 * math.sqrt(expected) + 16)
    found, start = [], -1
    while start < n - 1:          # gaps until the process has passed the last cell
        u = 1 - torch.rand(batch, generator=generator, dtype=torch.float64)    # (0, 1]
        gaps = torch.floor(torch.log(u) / log_miss) + 1
        positions = start + torch.cumsum(gaps, 0)
        found.append(positions[positions < n])
        start = int(positions[-1])
    cand = torch.cat(found).long()
    w = weights.index_select(0, cand)
    q_i = -torch.expm1(-tau * w)
    kept = torch.rand(cand.shape[0], generator=generator) * q < q_i
    cand, w, q_i = cand[kept], w[kept], q_i[kept]
    r = torch.rand(cand.shape[0], generator=generator)
    return cand, -torch.log1p(-r * q_i) / w


def balanced_sample(points_a: Tensor, certainty: Tensor, usable_at: UsableAt, num: int,
                    hw_a: tuple[int, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices of ``num`` of the ``[N]`` matches whose ``points_a`` ``[N x 2]`` (OpenCV px of
    A) are usable (``usable_at``, asked only about the cells that may be drawn: on a CPU a
    few percent of them): drawn without replacement with probability proportional to
    ``certainty`` ``[N]``, ``EXPANSION * num`` candidates, then thinned to an even spread over
    A (inverse density on a ``BALANCE_CELLS`` square grid; the idea of the KDE balancing above
    at a fraction of its cost, for the node's per-pair sampling). All of them when at most
    ``num`` are usable. Runs where the tensors are (torch ``generator`` on that device).

    Returns ``(idx [n], drawn [n])``, ``n = min(num, N)``: the indices and which of them are
    real draws (False past the number of usable matches), without waiting for the device.
    """
    n_all = certainty.shape[0]
    cand, cand_drawn = _weighted_without_replacement(certainty, min(EXPANSION * num, n_all),
                                                     generator, usable_at)
    cells = BALANCE_CELLS
    pa = points_a.index_select(0, cand)
    cx = (pa[:, 0] / hw_a[1] * cells).long().clamp(0, cells - 1)
    cy = (pa[:, 1] / hw_a[0] * cells).long().clamp(0, cells - 1)
    cell = cy * cells + cx
    density = torch.bincount(cell, weights=cand_drawn.float(), minlength=cells * cells)[cell]
    inverse = torch.where(cand_drawn, 1.0 / density.clamp_min(1.0), 0.0)
    pick, drawn = _weighted_without_replacement(inverse, min(num, cand.shape[0]), generator)
    return cand[pick], drawn
