"""Host <-> device traffic of a frame stream, without waiting for the device where it can go on.

* :class:`ImageUploader`: host images ``[H x W x 3]`` (uint8 as decoded, or float32) to one
  ``[B x 3 x H x W]`` tensor on the device, *without* converting to float on the host (4x less
  to copy for 8-bit images; ``RoMaV2.encode`` converts and normalises on the device). On CUDA
  the bytes go through a pinned staging buffer, reused across calls, with ``non_blocking=True``;
  before the buffer is refilled, the copy that last read it is waited for.
* :class:`HostStaging`: the device results of one set to the host in **one copy**: on CUDA
  they are packed into one device buffer and copied with one non-blocking copy into a pinned
  host buffer from a pool (reused across sets), an event marking its end; on the CPU they are
  host memory already and are handed over as they are.
* :class:`DeviceTimer`: the device time between two points of a thread's work, read later
  (CUDA events), so timing a stage never stalls the stream.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import torch
from torch import Tensor

#: Byte alignment of the results packed into one staging buffer.
ALIGN = 64


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


class PinnedPool:
    """Pinned host buffers (uint8), taken for one set and given back once read; a buffer is
    reused by a later set that fits in it. Thread-safe (taken by the device stage, given back
    by the host stage)."""

    def __init__(self):
        self._free: list[Tensor] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Tensor:
        with self._lock:
            fits = [b for b in self._free if b.numel() >= nbytes]
            if fits:
                buf = min(fits, key=Tensor.numel)
                self._free.remove(buf)
                return buf
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)

    def give(self, buf: Tensor) -> None:
        with self._lock:
            self._free.append(buf)


class Staged:
    """One set's results on their way to the host: :meth:`wait` gives ``{name: array}``
    (host views, valid until :meth:`release`)."""

    def __init__(self, arrays=None, host: Optional[Tensor] = None, layout=None,
                 event=None, pool: Optional[PinnedPool] = None):
        self._arrays, self._host, self._layout = arrays, host, layout
        self._event, self._pool = event, pool

    def wait(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._event.synchronize()
            self._arrays = {name: self._host[off:off + nbytes].view(dtype).view(shape).numpy()
                            for name, (off, nbytes, dtype, shape) in self._layout.items()}
        return self._arrays

    def release(self) -> None:
        """The arrays are no longer read: the pinned buffer goes back to the pool."""
        self._arrays = None
        if self._pool is not None and self._host is not None:
            self._pool.give(self._host)
            self._host = None


class HostStaging:
    """Device tensors of one set -> host arrays in one copy (see the module docstring)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._pool = PinnedPool() if self.device.type == 'cuda' else None
        self._packed: Optional[Tensor] = None

    def stage(self, tensors: dict[str, Tensor]) -> Staged:
        """Start the copy of ``tensors`` (on this stage's device); returns at once on CUDA."""
        if self._pool is None:
            return Staged(arrays={k: t.contiguous().numpy() for k, t in tensors.items()})
        layout, total = {}, 0
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            layout[name] = (total, nbytes, t.dtype, tuple(t.shape))
            total += -(-nbytes // ALIGN) * ALIGN
        if self._packed is None or self._packed.numel() < total:
            # one device buffer serves every set: all its writers and readers are ordered on
            # the one stream of the stage that owns this object
            self._packed = torch.empty(total, dtype=torch.uint8, device=self.device)
        for name, t in tensors.items():
            off, nbytes, dtype, shape = layout[name]
            self._packed[off:off + nbytes].view(dtype).view(shape).copy_(t)
        host = self._pool.take(total)
        host[:total].copy_(self._packed[:total], non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return Staged(host=host, layout=layout, event=event, pool=self._pool)


class DeviceTimer:
    """``start()`` ... ``stop()`` on the thread that queues the device work; ``seconds()``
    once that work is known to be done (after waiting for a later event): the device time on
    CUDA, the wall-clock time elsewhere."""

    def __init__(self, device):
        self._cuda = torch.device(device).type == 'cuda'
        self._marks: list = []

    def start(self) -> 'DeviceTimer':
        self._marks = [self._mark()]
        return self

    def stop(self) -> 'DeviceTimer':
        self._marks.append(self._mark())
        return self

    def _mark(self):
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> float:
        start, end = self._marks
        if not self._cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3
