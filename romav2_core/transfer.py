"""Host <-> device traffic of a frame stream: images up as they are, stage times that mean it.

* :class:`ImageUploader`: host images ``[H x W x 3]`` (uint8 as decoded, or float32) to one
  ``[B x 3 x H x W]`` tensor on the device, *without* converting to float on the host (4x less
  to copy for 8-bit images; ``RoMaV2.encode`` converts and normalises on the device). On CUDA
  the bytes go through a pinned staging buffer, reused across calls, with ``non_blocking=True``;
  before the buffer is refilled, the copy that last read it is waited for.
* :class:`StageClock`: wall-clock stage latencies that synchronise the device first, so on
  CUDA a stage's time includes its kernels, not only their launches.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
from torch import Tensor


class ImageUploader:
    """Uploads same-size image batches to ``device`` (see the module docstring)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._staging: Optional[Tensor] = None
        self._copied: Optional[torch.cuda.Event] = None

    def __call__(self, images: list[np.ndarray]) -> Tensor:
        """``images``: equal-shape ``[H x W x 3]`` arrays of one dtype -> ``[B x 3 x H x W]``."""
        host = torch.from_numpy(np.stack(images))                     # [B x H x W x 3]
        if self.device.type != 'cuda':
            return host.permute(0, 3, 1, 2).to(self.device)
        n = host.numel()
        if self._staging is None or self._staging.dtype != host.dtype or \
                self._staging.numel() < n:
            self._staging = torch.empty(n, dtype=host.dtype, pin_memory=True)
        elif self._copied is not None:
            self._copied.synchronize()    # the previous upload may still be reading it
        staged = self._staging[:n].view(host.shape)
        staged.copy_(host)
        out = staged.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        return out.permute(0, 3, 1, 2)


class StageClock:
    """``with clock.stage('model', timings): ...`` adds the stage's seconds to ``timings``."""

    def __init__(self, device):
        device = torch.device(device)
        self._cuda = device if device.type == 'cuda' else None

    @contextmanager
    def stage(self, name: str, timings: dict):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    def sync(self) -> None:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
