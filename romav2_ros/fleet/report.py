"""What ``romav2-batch`` shows: the fleet progress line, the per-bag table, ``summary.json``.

Per bag the driver keeps a :class:`BagRow`; the progress line and the table are views of
the rows, and ``summary.json`` is the rows plus the run's facts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

SUMMARY_FILE = 'summary.json'


@dataclasses.dataclass
class BagRow:
    """One input bag's outcome. ``status``: pending, running, done, skipped (done before,
    unchanged), failed, known-failed (failed before on the same input and options)."""

    name: str
    path: str
    status: str = 'pending'
    expected_frames: int | None = None
    frames: int = 0            # synchronised input sets
    processed: int = 0         # sets with outputs written
    dropped: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0       # worker time (sum over chunks)
    attempts: int = 0          # worker deaths survived + 1, max over chunks
    chunks: int = 1
    reason: str = ''
    workers: list = dataclasses.field(default_factory=list)


class Progress:
    """``romav2-batch: bags 3/10 (1 failed), frames 120/800, 4.2 frames/s, ETA 190 s`` on
    stderr: rewritten in place on a terminal; otherwise a new line when a bag finishes and
    at most every ``interval`` s in between. The rate counts frames processed in this run
    since the first model was ready; the ETA spreads the frames still expected over it."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self.tty = sys.stderr.isatty()
        self.started = None
        self.last = 0.0
        self.shown = None

    def start_clock(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def update(self, rows: list[BagRow], live_frames: dict, final: bool = False) -> None:
        """``live_frames``: bag name -> frames done so far by its running jobs."""
        finished = [r for r in rows if r.status not in ('pending', 'running')]
        failed = sum(r.status in ('failed', 'known-failed') for r in rows)
        todo = [r for r in rows if r.status not in ('skipped', 'known-failed')]
        # A running bag's frames are those of its finished chunks plus its live jobs'.
        done_frames = sum(r.frames for r in todo) + sum(live_frames.values())
        expected = sum(r.frames if r.status in ('done', 'failed') else
                       max(r.expected_frames or 0, r.frames + live_frames.get(r.name, 0))
                       for r in todo)
        now = time.monotonic()
        state = (len(finished), failed, done_frames)
        bag_finished = self.shown is None or state[:2] != self.shown[:2]
        if not final and (state == self.shown or not bag_finished and
                          now - self.last < (0.2 if self.tty else self.interval)):
            return
        self.last, self.shown = now, state
        elapsed = now - self.started if self.started else 0.0
        rate = done_frames / elapsed if elapsed > 0 else 0.0
        left = max(expected - done_frames, 0)
        eta = f'{left / rate:.0f} s' if rate > 0 and left else '-'
        line = (f'romav2-batch: bags {len(finished)}/{len(rows)}'
                f'{f" ({failed} failed)" if failed else ""}, frames {done_frames}/{expected}, '
                f'{rate:.2f} frames/s, ETA {eta}')
        end = '\n' if final or not self.tty else ''
        print(('\r' if self.tty else '') + line, end=end, file=sys.stderr, flush=True)


def _dropped_text(dropped: dict) -> str:
    return ', '.join(f'{k} {v}' for k, v in sorted(dropped.items())) or '-'


def table(rows: list[BagRow]) -> list[str]:
    """The final per-bag table (fixed-width text)."""
    header = ('bag', 'status', 'frames', 'processed', 'dropped', 'seconds', 'attempts')
    body = [(r.name, r.status, str(r.frames), str(r.processed), _dropped_text(r.dropped),
             f'{r.seconds:.1f}', str(r.attempts)) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in (header, *body)]
    lines.insert(1, '  '.join('-' * w for w in widths))
    for r in rows:
        if r.reason:
            lines.append(f'{r.name}: {r.reason}')
    return lines


def write_summary(out_dir: Path, run: dict, rows: list[BagRow]) -> Path:
    """``summary.json``: the run's facts and totals and one entry per bag (atomic write)."""
    totals = {status: sum(r.status == status for r in rows)
              for status in ('done', 'skipped', 'failed', 'known-failed', 'pending')}
    computed = [r for r in rows if r.status in ('done', 'failed')]
    totals.update(bags=len(rows), frames=sum(r.frames for r in computed),
                  processed=sum(r.processed for r in computed))
    path = out_dir / SUMMARY_FILE
    tmp = path.with_name(f'.{SUMMARY_FILE}.tmp')
    tmp.write_text(json.dumps({**run, 'totals': totals,
                               'bags': [dataclasses.asdict(r) for r in rows]}, indent=1))
    os.replace(tmp, path)
    return path


class ProgressBoard:
    """Where workers post their jobs' progress and the driver reads it (a Ray actor with
    no CPU of its own: ``report`` is fire-and-forget, ``snapshot`` is polled)."""

    def __init__(self):
        self.jobs: dict[str, tuple] = {}

    def report(self, key: str, attempt: int, done: int, processed: int, total: int) -> None:
        self.jobs[key] = (attempt, done, processed, total)

    def snapshot(self) -> dict[str, tuple]:
        return self.jobs
