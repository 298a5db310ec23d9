"""Pictures of matches, warps and uncertainty: ``rgb8`` numpy images (no ROS, no torch).

Inputs are ``[H x W x 3]`` uint8 RGB images and arrays in OpenCV pixels of the full images
(``geometry.py``); NaN marks invalid values. Colours come from OpenCV's TURBO colour map:
blue = low, red = high.
"""
from __future__ import annotations

import cv2
import numpy as np

#: Range of the covariance heat map: sigma in px, log scale (below / above are clipped).
STD_RANGE_PX = (0.1, 10.0)


def colormap(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Values ``[...]`` to TURBO RGB ``[... x 3]`` uint8 over ``[lo, hi]``; NaN -> black."""
    values = np.asarray(values, np.float32)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)
    rgb = lut[:, 0, ::-1][np.round(scaled * 255).astype(np.uint8)]
    rgb[~np.isfinite(values)] = 0
    return rgb


def side_by_side(img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
    """A and B next to each other on a black canvas of the taller height."""
    h = max(img_a.shape[0], img_b.shape[0])
    canvas = np.zeros((h, img_a.shape[1] + img_b.shape[1], 3), np.uint8)
    canvas[:img_a.shape[0], :img_a.shape[1]] = img_a
    canvas[:img_b.shape[0], img_a.shape[1]:] = img_b
    return canvas


def draw_matches(img_a, img_b, points_a, points_b, certainty, max_lines: int = 200,
                 seed: int = 0) -> np.ndarray:
    """A | B with up to ``max_lines`` match lines coloured by certainty (TURBO, 0..1)."""
    canvas = side_by_side(img_a, img_b)
    n = len(points_a)
    pick = np.random.default_rng(seed).permutation(n)[:max_lines] if n > max_lines \
        else np.arange(n)
    colours = colormap(np.asarray(certainty)[pick])
    offset = np.array([img_a.shape[1], 0])
    for (pa, pb, colour) in zip(points_a[pick], points_b[pick] + offset, colours):
        a, b = tuple(int(round(v)) for v in pa), tuple(int(round(v)) for v in pb)
        c = tuple(int(v) for v in colour)
        cv2.line(canvas, a, b, c, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 2, c, -1, cv2.LINE_AA)
        cv2.circle(canvas, b, 2, c, -1, cv2.LINE_AA)
    return canvas


def warp_image(img_b: np.ndarray, warp_px: np.ndarray) -> np.ndarray:
    """B resampled at ``warp_px`` (``[H_A x W_A x 2]``, B pixels): B seen from A; NaN -> black."""
    valid = np.isfinite(warp_px).all(axis=2)
    maps = np.where(valid[..., None], warp_px, -1e4).astype(np.float32)
    out = cv2.remap(img_b, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out[~valid] = 0
    return out


def warp_visualization(img_a, img_b, warp_px, certainty) -> np.ndarray:
    """A | B warped into A and faded by certainty: where they agree the warp is right."""
    weight = np.clip(np.nan_to_num(certainty, nan=0.0), 0, 1)[..., None]
    warped = (warp_image(img_b, warp_px).astype(np.float32) * weight).astype(np.uint8)
    return side_by_side(img_a, warped)


def covariance_heatmap(cov_xx, cov_xy, cov_yy) -> np.ndarray:
    """sigma of the major axis (px) of each 2x2 covariance (px^2), log-scale TURBO heat map
    over :data:`STD_RANGE_PX`; NaN (unknown / invalid) -> black."""
    half_trace = (cov_xx + cov_yy) / 2
    major = half_trace + np.sqrt(np.maximum(((cov_xx - cov_yy) / 2) ** 2 + cov_xy ** 2, 0))
    with np.errstate(invalid='ignore', divide='ignore'):
        log_std = np.log10(np.sqrt(major))
    lo, hi = (np.log10(v) for v in STD_RANGE_PX)
    return colormap(log_std, lo, hi)
