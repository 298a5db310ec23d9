"""The model worker of ``romav2-batch``: one long-lived matcher, bag after bag.

:class:`BagWorker` is a plain class; the driver makes it a Ray actor (``ray.remote``), so
this module never imports Ray and runs in-process in tests. The matcher is built (and warmed
up, as the node does) once in ``__init__``; every job gets a fresh
:class:`~romav2_ros.pipeline.MatchingPipeline` inside :func:`romav2_ros.replay.replay_bag`,
so a bag's outputs do not depend on the bags the worker did before.

Outputs are never visible half-written: a job writes into ``<out>/.partial/<job id>/<bag
folder name>`` (the same folder name, so the storage file inside is named as
``romav2-replay`` names it) and the folder is renamed to its final place only after the
writer closed. A worker that dies mid-bag leaves its partial folder behind; the driver
deletes ``.partial`` at the start and the end of a run.

Test hook (documented in docs/fleet.md): with ``ROMAV2_FLEET_TEST_CRASH_AFTER=N`` and
``ROMAV2_FLEET_TEST_CRASH_MARKER=<file>`` set, the first worker to finish N frames of a bag
while ``<file>`` does not exist creates it and ends its process at once (``os._exit(1)``),
as an OOM kill or a crash would; every later attempt runs normally.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

from romav2_ros import bag_io, replay
from romav2_ros.fleet.inputs import BagInput

PARTIAL_DIR = '.partial'
CRASH_AFTER_ENV = 'ROMAV2_FLEET_TEST_CRASH_AFTER'
CRASH_MARKER_ENV = 'ROMAV2_FLEET_TEST_CRASH_MARKER'
#: Seconds between two progress reports of a job (the last one is always sent).
REPORT_INTERVAL_S = 0.5


@dataclasses.dataclass
class Job:
    """One unit of work: a whole bag, or one time chunk of it (``chunk`` >= 0)."""

    key: str                  # unique per bag and chunk, e.g. 'robot1/run3#2'
    bag: BagInput
    out_dir: Path
    window: replay.TimeWindow | None = None
    chunk: int | None = None
    attempt: int = 1


@dataclasses.dataclass
class JobResult:
    """What a job did. ``error``: one line when it failed on its input (or a bug);
    ``part``: a chunk's output bag, to be merged; ``log``: the replay's stderr."""

    key: str
    summary: replay.Summary | None = None
    written: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    part: str | None = None
    error: str | None = None
    log: str = ''
    worker: dict = dataclasses.field(default_factory=dict)


def partial_path(out_dir: Path, bag: BagInput) -> Path:
    """A fresh temporary output folder for ``bag`` under ``<out>/.partial``."""
    return out_dir / PARTIAL_DIR / uuid.uuid4().hex / Path(bag.name).name


def publish(partial: Path, final: Path) -> None:
    """Move a complete output bag to its final name (replacing an outdated one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # its parent folder is deleted below
        os.rename(final, partial.parent / f'{final.name}.old')
    os.rename(partial, final)
    shutil.rmtree(partial.parent)


class _Reporter:
    """The replay's ``progress`` object inside a worker: forwards (done, processed) per job,
    at most every :data:`REPORT_INTERVAL_S`, and runs the crash test hook."""

    def __init__(self, report: Callable, key: str, attempt: int, total: int):
        self.report, self.key, self.attempt, self.total = report, key, attempt, total
        self.last = 0.0
        crash_after = os.environ.get(CRASH_AFTER_ENV)
        self.crash_after = int(crash_after) if crash_after else None

    def update(self, done: int, processed: int, final: bool = False) -> None:
        if self.crash_after is not None and processed >= self.crash_after:
            self.crash_after = None
            _crash_once()
        now = time.monotonic()
        if final or now - self.last >= REPORT_INTERVAL_S:
            self.last = now
            self.report(self.key, self.attempt, done, processed, self.total)


def _crash_once() -> None:
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f'{os.getpid()}\n'.encode())
    os.close(fd)
    os._exit(1)


def _no_report(*_):
    pass


class BagWorker:
    """A model worker: ``replay_args`` is the parsed ``romav2-replay`` namespace shared by
    all bags (its bag paths are set per job); ``report(key, attempt, done, processed,
    total)`` receives progress; ``threads``: CPU threads of torch and OpenCV (the cores Ray
    gave the actor)."""

    def __init__(self, replay_args, report: Callable = _no_report, threads: int | None = None):
        import cv2
        import torch
        if threads:  # torch (model, dense outputs) and OpenCV (pose, viz) alike
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        self.args, self.report = replay_args, report
        started = time.perf_counter()
        self.matcher = replay.build_matcher(replay_args.values)
        if replay_args.values['warmup']:
            from romav2_ros.matchers import warm_up
            warm_up(self.matcher, getattr(self.matcher, 'device', 'cpu'), replay_args.mode)
        self.build_s = time.perf_counter() - started
        self.identity = {'pid': os.getpid(), 'host': socket.gethostname(),
                         'device': str(getattr(self.matcher, 'device', 'cpu')),
                         'torch_threads': torch.get_num_threads(),
                         'model_build_s': round(self.build_s, 3)}

    def describe(self) -> dict:
        return self.identity

    def run(self, job: Job) -> JobResult:
        """Replay ``job``'s bag (or chunk) with this worker's matcher; a whole bag is
        published under its final name, a chunk is left in ``.partial`` for the merge."""
        partial = partial_path(job.out_dir, job.bag)
        partial.parent.mkdir(parents=True)
        args = copy.copy(self.args)
        args.in_bag, args.out_bag = job.bag.path, partial
        result = JobResult(job.key, worker=self.identity)
        log = io.StringIO()
        started = time.monotonic()
        try:
            with contextlib.redirect_stderr(log):
                bag = replay.replay_bag(
                    args, self.matcher, window=job.window,
                    progress=lambda total: _Reporter(self.report, job.key, job.attempt, total))
            if bag.status != 'done':
                raise replay.ReplayError(f'replay {bag.status}')
        except (bag_io.BagError, replay.ReplayError) as exc:
            result.error = bag_io.one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or a model fault: report, go on
            result.error = f'internal error: {bag_io.one_line(exc)}'
        result.log, result.seconds = log.getvalue(), time.monotonic() - started
        if result.error is not None:
            shutil.rmtree(partial.parent, ignore_errors=True)
            return result
        result.summary, result.written = bag.summary, bag.written
        if job.chunk is None:
            publish(partial, job.out_dir / job.bag.name)
        else:
            result.part = str(partial)
        return result

    def merge(self, job: Job, parts: list[str], messages_read: int) -> JobResult:
        """Concatenate a bag's chunk outputs (in time order) into its final output bag.

        ``messages_read``: input messages the chunks read inside their windows, checked
        against the bag's index as the whole-bag replay checks it."""
        from romav2_ros.fleet import chunks
        result = JobResult(job.key, worker=self.identity)
        started = time.monotonic()
        partial = partial_path(job.out_dir, job.bag)
        partial.parent.mkdir(parents=True)
        try:
            chunks.check_complete(self.args, job.bag.path, messages_read)
            result.written = chunks.concatenate([Path(p) for p in parts], partial,
                                                self.args.storage)
        except (bag_io.BagError, replay.ReplayError) as exc:
            result.error = bag_io.one_line(exc)
            shutil.rmtree(partial.parent, ignore_errors=True)
        else:
            publish(partial, job.out_dir / job.bag.name)
        for part in parts:
            shutil.rmtree(Path(part).parent, ignore_errors=True)
        result.seconds = time.monotonic() - started
        return result
