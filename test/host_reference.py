"""The host implementation of the post-processing as it was before it moved to the model's
device (issue 20; romav2_core/dense.py, stereo.py, sampling.py and romav2_ros/messages.py at
commit 47190d3): numpy and float64 on the host, one grid cell or pixel at a time in array
form. Kept here, and only here, as the oracle the device products are tested against
(test/core/test_products.py); nothing in the package uses it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EXPANSION = 4
BALANCE_CELLS = 32


def _to_px(warp, h, w):
    size = warp.new_tensor([w, h])
    return (warp + 1) / 2 * size - 0.5


def _packed(warp, overlap, covariance, hw_b):
    """``[6 x H_o x W_o]``: warp in B px (2), certainty (1), covariance in B px^2 (3)."""
    ho, wo = warp.shape[:2]
    warp_px = _to_px(warp.float(), *hw_b)
    d = covariance.new_tensor([hw_b[1] / wo, hw_b[0] / ho]).float()
    cov = covariance.float() * d[:, None] * d[None, :]
    return torch.cat([warp_px, overlap.float().clamp(0, 1), cov[..., 0, 0:1],
                      cov[..., 0, 1:2], cov[..., 1, 1:2]], dim=-1).permute(2, 0, 1)


def inside(points, hw):
    h, w = hw
    x, y = points[..., 0], points[..., 1]
    with np.errstate(invalid='ignore'):
        return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def upsample(warp, overlap, covariance, hw_a, hw_b, threshold):
    """(warp [H x W x 2], certainty [H x W], covariance [H x W x 3], valid [H x W]) numpy."""
    stack = _packed(warp, overlap, covariance, hw_b).contiguous()
    up = F.interpolate(stack[None], size=hw_a, mode='bilinear', align_corners=False)[0]
    host = up.permute(1, 2, 0).contiguous().cpu().numpy()
    warp_px, certainty, cov = host[..., :2], host[..., 2], host[..., 3:]
    valid = (certainty >= threshold) & inside(warp_px, hw_b)
    warp_px[~valid] = np.nan
    cov[~valid] = np.nan
    return warp_px, certainty, cov, valid


def grid_matches(warp, overlap, covariance, hw_a, hw_b, threshold, stride=1):
    """(points_a, points_b, certainty, cov_b [N x 2 x 2], valid) float64 per grid cell."""
    ho, wo = warp.shape[:2]
    host = _packed(warp[::stride, ::stride], overlap[::stride, ::stride],
                   covariance[::stride, ::stride], hw_b).permute(1, 2, 0).reshape(-1, 6)
    host = host.cpu().numpy().astype(np.float64)
    h, w = hw_a
    jj, ii = np.meshgrid(np.arange(0, wo, stride), np.arange(0, ho, stride), indexing='xy')
    points_a = np.stack([(jj + 0.5) * (w / wo) - 0.5, (ii + 0.5) * (h / ho) - 0.5],
                        axis=-1).reshape(-1, 2)
    cov = np.stack([host[:, 3], host[:, 4], host[:, 4], host[:, 5]], axis=-1).reshape(-1, 2, 2)
    certainty, points_b = host[:, 2], host[:, :2]
    valid = (certainty >= threshold) & inside(points_b, hw_b)
    return points_a, points_b, certainty, cov, valid


def disparity(P_left, P_right, warp_x):
    u = np.arange(warp_x.shape[1], dtype=np.float64)[None, :]
    return (u - warp_x - (P_left[0, 2] - P_right[0, 2])).astype(np.float32)


def fT(P_right):
    return P_right[0, 0] * (-P_right[0, 3] / P_right[0, 0])


def depth(P_right, d):
    d = d.astype(np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        z = np.where(d > 0, fT(P_right) / d, np.nan)
    return z.astype(np.float32)


def depth_stddev(P_right, z, var_x):
    z = z.astype(np.float64)
    with np.errstate(invalid='ignore'):
        sigma_d = np.sqrt(np.where(var_x >= 0, var_x, np.nan))
    return (z * z / fT(P_right) * sigma_d).astype(np.float32)


def points(P_left, R_left, z, rotate: bool):
    """``[H x W x 3]`` points; ``rotate``: by ``R_left^T`` into the optical frame."""
    h, w = z.shape
    z = z.astype(np.float64)
    x = (np.arange(w) - P_left[0, 2])[None, :] / P_left[0, 0] * z
    y = (np.arange(h) - P_left[1, 2])[:, None] / P_left[1, 1] * z
    rect = np.stack([x, y, z], axis=-1)
    return ((rect @ R_left) if rotate else rect).astype(np.float32)


def packed_rgb(rgb):
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).view(np.float32)


def cloud_bytes(pts, rgb, organized=True, stride=1) -> bytes:
    """The PointCloud2 data of ``[H x W x 3]`` points and colours (x y z rgb, 16 bytes)."""
    pts, col = pts[::stride, ::stride], rgb[::stride, ::stride]
    cloud = np.empty(pts.shape[:2], dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                           ('rgb', '<f4')])
    cloud['x'], cloud['y'], cloud['z'] = pts[..., 0], pts[..., 1], pts[..., 2]
    cloud['rgb'] = packed_rgb(col)
    if not organized:
        cloud = cloud[np.isfinite(pts).all(axis=-1)][None, :]
    return cloud.tobytes()


def vertical_disparity(points_a, points_b):
    """(median, p90, count) of ``|y_A - y_B|``."""
    dy = np.abs(points_a[:, 1] - points_b[:, 1])
    if dy.size == 0:
        return float('nan'), float('nan'), 0
    median, p90 = np.percentile(dy, [50, 90])
    return float(median), float(p90), int(dy.size)


def balanced_indices(points_a, certainty, num, rng, hw_a):
    """The host sampler: ``num`` indices drawn by certainty, thinned by cell density."""
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
