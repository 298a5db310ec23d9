"""The dense-matcher interface shared by ``RoMaV2`` and test doubles (oracle matchers).

Everything downstream (the ROS pipeline, replay, evaluation, benchmarks) talks to a matcher
only through this protocol, so an oracle matcher with a known warp can stand in for the model.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class DenseMatcher(Protocol):
    """A dense matcher with a per-image feature cache.

    ``encode(images)``: ``images`` is ``[B x 3 x H x W]`` RGB, uint8 or float in [0, 1], any
    size (the matcher resizes to its working resolution), on the matcher's device. Returns
    opaque features of the B images that can be matched against any other images' features
    any number of times. Batched features support ``feats[i:j]`` (a sub-batch) and, for
    batches of several pairs, ``type(feats).cat([f1, f2, ...])`` (see :func:`cat_features`).

    ``match_features(feats_A, feats_B)`` returns a dict of tensors on the output grid
    ``H_out x W_out`` of image A (``output_hw``):

    * ``warp_AB``        ``[B x H_out x W_out x 2]`` position in B of each pixel centre of A,
      normalised coordinates (see ``geometry.py``);
    * ``overlap_AB``     ``[B x H_out x W_out x 1]`` probability in [0, 1] that the pixel of A
      is visible in B;
    * ``covariance_AB``  ``[B x H_out x W_out x 2 x 2]`` covariance of ``warp_AB`` in px^2 of
      an ``H_out x W_out`` grid over B (NaN where unknown);
    * and the same ``*_BA`` keys when the matcher is bidirectional.
    """

    @property
    def output_hw(self) -> tuple[int, int]: ...

    def encode(self, images: Tensor) -> Any: ...

    def match_features(self, feats_A: Any, feats_B: Any) -> dict[str, Tensor]: ...


def cat_features(feats: list) -> Any:
    """Features of several batches as one batch (in order); a single one as it is, so a
    matcher without ``cat`` still serves one pair at a time."""
    if len(feats) == 1:
        return feats[0]
    return type(feats[0]).cat(feats)
