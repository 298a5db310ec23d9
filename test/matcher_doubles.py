"""The base of every DenseMatcher test double: batched features and an exact grid warp.

A double describes its scene by :meth:`GridDouble.warp_px` (pixel of A -> pixel of B) and
:meth:`GridDouble.certainty`; this base lays them out as a matcher does
(``romav2_core.interface.DenseMatcher``) on an ``H_o x W_o`` output grid, in normalised
coordinates, computed here from the definitions (a cell's centre is at ``(j + 0.5) W / W_o -
0.5`` px, the normalised x of pixel x is ``(2 x + 1) / W - 1``), not with ``romav2_core.geometry``
whose users these doubles test.

Features are a :class:`DoubleFeatures` batch (one record per encoded image: its size and its
top-left pixel), so sub-batches and concatenations work as with the real model. Subprocesses
import the doubles by ``model_source:=<module>:<factory>`` with ``test/`` and the double's
folder on PYTHONPATH.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageRecord:
    """What a double remembers of one encoded image."""

    hw: tuple[int, int]
    corner: tuple[int, int, int]    # RGB of pixel (0, 0) as 0..255 (a test's tag)


class DoubleFeatures:
    """A batch of :class:`ImageRecord`; slicing and ``cat`` as ``ImageFeatures``."""

    def __init__(self, records):
        self.records = list(records)

    def __getitem__(self, index):
        return DoubleFeatures(self.records[index])

    def __len__(self):
        return len(self.records)

    @classmethod
    def cat(cls, parts):
        return cls([r for p in parts for r in p.records])


def corner_value(images: torch.Tensor, i: int) -> tuple[int, int, int]:
    """RGB of pixel (0, 0) of batch element ``i`` on the 0..255 scale, uint8 or float input."""
    px = images[i, :, 0, 0].double()
    if images.dtype != torch.uint8:
        px = px * 255
    return tuple(int(round(float(v))) for v in px)


def cell_centres_px(ho: int, wo: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(u, v)`` ``[H_o x W_o]``: OpenCV px of A of the output grid's cell centres."""
    j, i = np.meshgrid(np.arange(wo), np.arange(ho), indexing='xy')
    return (j + 0.5) * w / wo - 0.5, (i + 0.5) * h / ho - 0.5


def to_normalized(x_px: np.ndarray, y_px: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV px of an ``h x w`` image -> ``[... x 2]`` normalised (align_corners=False)."""
    return np.stack([(2 * x_px + 1) / w - 1, (2 * y_px + 1) / h - 1], axis=-1)


class GridDouble:
    """Subclasses define ``warp_px`` (and may define ``certainty``, ``covariance_grid``).

    ``covariance_grid``: the 2x2 covariance (px^2 of the output grid over B) of every match.
    ``delay``: seconds of sleep per ``match_features`` call (a slow model).
    """

    device = 'cpu'
    covariance_grid = np.diag([0.25, 0.25])

    def __init__(self, output_hw=(120, 160), delay: float = 0.0):
        self._hw = tuple(output_hw)
        self.delay = delay
        self.encoded = 0
        self.match_calls = 0

    @property
    def output_hw(self):
        return self._hw

    def encode(self, images: torch.Tensor) -> DoubleFeatures:
        self.encoded += images.shape[0]
        hw = tuple(images.shape[-2:])
        return DoubleFeatures(ImageRecord(hw, corner_value(images, i))
                              for i in range(images.shape[0]))

    def warp_px(self, u, v, a: ImageRecord, b: ImageRecord):
        """``(x_B, y_B)`` px of B seen at OpenCV px ``(u, v)`` of A."""
        raise NotImplementedError

    def certainty(self, u, v, a: ImageRecord, b: ImageRecord):
        return np.full(np.shape(u), 0.9)

    def check(self, a: ImageRecord, b: ImageRecord) -> None:
        """Hook for fault-injecting doubles (raise here)."""

    def match_features(self, fa: DoubleFeatures, fb: DoubleFeatures) -> dict:
        self.match_calls += 1
        if self.delay:
            time.sleep(self.delay)
        ho, wo = self._hw
        warps, overlaps = [], []
        for a, b in zip(fa.records, fb.records):
            self.check(a, b)
            u, v = cell_centres_px(ho, wo, *a.hw)
            xb, yb = self.warp_px(u, v, a, b)
            hb, wb = b.hw
            inside = (xb >= -0.5) & (xb <= wb - 0.5) & (yb >= -0.5) & (yb <= hb - 0.5)
            warps.append(to_normalized(xb, yb, hb, wb))
            overlaps.append(np.where(inside, self.certainty(u, v, a, b), 0.0)[..., None])
        n = len(warps)
        cov = torch.as_tensor(np.broadcast_to(self.covariance_grid, (n, ho, wo, 2, 2)).copy())
        return {'warp_AB': torch.as_tensor(np.stack(warps)).float(),
                'overlap_AB': torch.as_tensor(np.stack(overlaps)).float(),
                'covariance_AB': cov.float()}
