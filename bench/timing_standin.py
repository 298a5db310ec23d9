"""TIMING STAND-IN for the RoMa v2 model: no model, only its output sizes and a chosen time.

For node benchmarks (``bench/bench_rate.py``) that measure what the node does around the model
(decode, synchronisation, post-processing, publishing, queueing) at a controlled model time.
The node loads it as a matcher (``romav2_core.interface.DenseMatcher``) through its
``model_source`` parameter, with this folder (and ``test/``, ``test/ros/``) on its PYTHONPATH:

    romav2_node --ros-args -p model_source:=timing_standin:stand_in
    ROMAV2_STANDIN_MODEL_MS=32   # the model time per match_features call, ms (default 32)

What it returns is the real model's output for the node's setting, in size: the output grid
is ``H_hr x W_hr`` when the setting has a high-resolution pass, else ``H_lr x W_lr`` (``base``:
640 x 640), with ``warp_AB [B x H x W x 2]`` normalised, ``overlap_AB [B x H x W x 1]`` and
``covariance_AB [B x H x W x 2 x 2]`` (px^2 of the output grid over B). Its content gives the
post-processing realistic work: the scene of ``oracle_matchers.StereoTrajectory`` (a rectified
640 x 480 rig, focal 500 px, baseline 0.1 m, in front of a surface with relief 4.5-6.5 m away):

* a stereo pair (left, right of one frame): the exact rectified warp (positive disparities,
  8-11 px) plus noise;
* a temporal pair (left_t, earlier left): the warp of the rig's rigid motion between two frames
  plus noise;
* both: Gaussian noise of :data:`NOISE_PX` image px, :data:`OUTLIER_SHARE` of the cells moved
  to uniformly random places in B with an ordinary certainty (confident outliers, so the pose
  RANSAC has real work), certainty mostly high (0.5-0.97) with :data:`LOW_CERTAINTY_SHARE` of
  the cells in smooth blobs below the node's default threshold, 0 outside B; the covariance
  grows as the certainty falls.

Pairs are told apart by the tag in pixel (0, 0) of each image (``oracle_matchers.tag``: green
= 1 for a left image, 2 for a right one, blue = 77), read in :meth:`TimingStandIn.encode`: left
-> right is a stereo pair, left -> left a temporal pair (whatever frame numbers the red channel
carries, so a publisher may repeat one pre-built set); any other pair (the node's warm-up with
random images) is answered with the stereo warp. Images must be 640 x 480 (the scene's camera).

Cost: every output is computed once at construction (both pair kinds, on the node's device)
and returned as it is (the node treats model outputs as read-only); a batch of several pairs
is concatenated once per combination of kinds. ``encode`` only reads pixel (0, 0) of each
image, and ``match_features`` sleeps for the model time (``time.sleep`` releases the GIL, as a
CUDA wait does) once per call, whatever the batch: so the model time is all in the sleep and
the stand-in costs the node's CPU nearly nothing. Its numbers are a scene's, not a model's:
for timing only.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

_TEST = Path(__file__).resolve().parents[1] / 'test'
for _path in (_TEST, _TEST / 'ros'):   # the scene and the test doubles' feature records
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from matcher_doubles import (DoubleFeatures, ImageRecord, cell_centres_px,  # noqa: E402
                             corner_value, to_normalized)
from oracle_matchers import H, W, StereoTrajectory  # noqa: E402

MODEL_MS_ENV = 'ROMAV2_STANDIN_MODEL_MS'
DEFAULT_MODEL_MS = 32.0
#: Image px of Gaussian noise on every inlier's position in B.
NOISE_PX = 0.5
#: Share of the cells sent to a random place in B (confident outliers).
OUTLIER_SHARE = 0.15
#: Share of the cells with certainty 0.02 (below the node's default threshold 0.05).
LOW_CERTAINTY_SHARE = 0.1
#: Tag of an image (green and blue of pixel (0, 0); ``oracle_matchers.tag``): left, right.
LEFT, RIGHT, TAG_BLUE = 1, 2, 77
#: The scene's frame the pairs are taken from (stereo: k0 left -> right; temporal: k0 -> k0-1).
FRAME = 4


def pair_kind(a: ImageRecord, b: ImageRecord) -> str:
    """'temporal' for left -> left, else 'stereo' (left -> right, and untagged warm-up pairs)."""
    tagged = a.corner[2] == TAG_BLUE and b.corner[2] == TAG_BLUE
    if tagged and a.corner[1] == LEFT and b.corner[1] == LEFT:
        return 'temporal'
    return 'stereo'


def scene_outputs(kind: str, output_hw: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """``warp [H_o x W_o x 2]`` (normalised), ``overlap [H_o x W_o x 1]``, ``covariance
    [H_o x W_o x 2 x 2]`` (px^2 of the output grid over B) of one pair ``kind`` of the scene
    (module docstring), float32."""
    ho, wo = output_hw
    rng = np.random.default_rng([seed, kind == 'temporal'])
    u, v = cell_centres_px(ho, wo, H, W)
    k_b, side_b = (FRAME, RIGHT) if kind == 'stereo' else (FRAME - 1, LEFT)
    xb, yb = StereoTrajectory(frames=FRAME + 1).warp(u, v, FRAME, LEFT, k_b, side_b)
    xb = xb + rng.normal(0.0, NOISE_PX, xb.shape)
    yb = yb + rng.normal(0.0, NOISE_PX, yb.shape)
    outlier = rng.random(xb.shape) < OUTLIER_SHARE
    xb[outlier] = rng.uniform(-0.5, W - 0.5, outlier.sum())
    yb[outlier] = rng.uniform(-0.5, H - 0.5, outlier.sum())
    # a smooth field in [0, 1] over the grid: low values become the low-certainty blobs
    field = cv2.resize(rng.random((6, 8)), (wo, ho), interpolation=cv2.INTER_CUBIC)
    field = (field - field.min()) / (field.max() - field.min())
    certainty = np.where(field < np.quantile(field, LOW_CERTAINTY_SHARE), 0.02,
                         0.5 + 0.47 * field)
    inside = (xb >= -0.5) & (xb <= W - 0.5) & (yb >= -0.5) & (yb <= H - 0.5)
    certainty = np.where(inside, certainty, 0.0)
    # image px^2 -> px^2 of the output grid over B (cells are W/W_o x H/H_o image px)
    sigma2 = (NOISE_PX / np.maximum(certainty, 0.02)) ** 2
    covariance = np.zeros((ho, wo, 2, 2))
    covariance[..., 0, 0] = sigma2 * (wo / W) ** 2
    covariance[..., 1, 1] = sigma2 * (ho / H) ** 2
    return {'warp': to_normalized(xb, yb, H, W).astype(np.float32),
            'overlap': certainty[..., None].astype(np.float32),
            'covariance': covariance.astype(np.float32)}


class TimingStandIn:
    """The TIMING STAND-IN matcher (module docstring): precomputed scene outputs on an
    ``output_hw`` grid, ``model_ms`` of sleep per ``match_features`` call."""

    def __init__(self, output_hw: tuple[int, int], model_ms: float = DEFAULT_MODEL_MS,
                 device: str = 'cpu', seed: int = 0):
        self._hw = tuple(output_hw)
        self.model_s = model_ms / 1e3
        self.device = device
        self._single = {kind: {key: torch.from_numpy(a)[None].to(device) for key, a in
                               scene_outputs(kind, self._hw, seed).items()}
                        for kind in ('stereo', 'temporal')}
        self._batches: dict[tuple, dict] = {}

    @property
    def output_hw(self) -> tuple[int, int]:
        return self._hw

    def encode(self, images: torch.Tensor) -> DoubleFeatures:
        """Records of the ``[B x 3 x H x W]`` images (size and pixel (0, 0)); no model work."""
        hw = tuple(images.shape[-2:])
        return DoubleFeatures(ImageRecord(hw, corner_value(images, i))
                              for i in range(images.shape[0]))

    def match_features(self, feats_a: DoubleFeatures, feats_b: DoubleFeatures) -> dict:
        kinds = tuple(pair_kind(a, b) for a, b in zip(feats_a.records, feats_b.records))
        for rec in feats_a.records + feats_b.records:
            if rec.corner[2] == TAG_BLUE and rec.hw != (H, W):
                raise ValueError(f'timing stand-in: tagged images must be {W}x{H} (its '
                                 f'scene\'s camera), got {rec.hw[1]}x{rec.hw[0]}')
        batch = self._batches.get(kinds)
        if batch is None:
            batch = {f'{key}_AB': torch.cat([self._single[k][key] for k in kinds])
                     for key in ('warp', 'overlap', 'covariance')}
            self._batches[kinds] = batch
        time.sleep(self.model_s)
        return batch


def stand_in(config=None, device: str = 'cpu', weights: str = '', seed: int = 0):
    """``model_source:=timing_standin:stand_in``: the node's setting's output grid, the model
    time from ``ROMAV2_STANDIN_MODEL_MS`` (ms, default 32)."""
    output_hw = (config.H_hr, config.W_hr) if config.has_hr else (config.H_lr, config.W_lr)
    model_ms = float(os.environ.get(MODEL_MS_ENV, DEFAULT_MODEL_MS))
    return TimingStandIn(output_hw, model_ms, device=device, seed=seed)
