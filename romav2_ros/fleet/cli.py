"""``romav2-batch``: ``romav2-replay`` over many bags on a Ray cluster (or one machine).

Every input bag becomes one output bag of the same name under ``--out``, written by
:func:`romav2_ros.replay.replay_bag` exactly as ``romav2-replay`` writes it. The driver (this
process) finds the bags, skips those the manifest shows as done, and hands bags (or time
chunks of long bags) to a pool of long-lived model actors (:class:`~.worker.BagWorker`, one
matcher each, ``num_gpus`` per actor on GPU machines, ``num_cpus`` otherwise; :mod:`.pool`).

Fault handling, and why it is built this way: Ray restarts a dead actor process
(``max_restarts``; the new process builds its model again), but its own task retries
(``max_task_retries``) would retry the bag on *that same* actor, after the rebuild. The
driver instead takes the failed call (a ``RayActorError``) and queues the bag again, to an
idle worker other than the one it died on when there is one, up to ``--retries`` times. The
dead attempt's partial output is never renamed into place (see :mod:`.worker`).

Exit status: 0 every input done (now or before), 3 some inputs failed (the others are done;
see the table and ``summary.json``), 2 bad arguments, 1 the run itself failed (Ray did not
start, no worker could build its model, another run holds ``--out``), 130 interrupted
(finished bags stay done, the rest is recomputed by a rerun).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import fcntl
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from romav2_ros import replay
from romav2_ros.fleet import FleetError, chunks, inputs, manifest, report
from romav2_ros.fleet.pool import Pool, ray_reason, start_ray
from romav2_ros.fleet.worker import PARTIAL_DIR, Job, JobResult

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Set by SIGINT/SIGTERM (:func:`_on_interrupt`). Ray runs parts of its calls with SIGINT
#: deferred and can lose the KeyboardInterrupt raised at their end (seen once: a SIGINT mid-run,
#: then every bag finished and the exit status was 0), so the driver's loop checks this too.
INTERRUPT_REQUESTED = threading.Event()
LOCK_FILE = '.romav2-batch.lock'


# --- command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The replay's options plus the fleet's; ``parser.fleet_dests``: the fleet's own."""
    parser = replay.build_parser(bag_paths=False)
    replay_dests = {action.dest for action in parser._actions}  # noqa: SLF001
    parser.prog = 'romav2-batch'
    parser.description = (
        'Run romav2-replay over many bags with Ray: each input bag becomes an output bag of '
        'the same name under --out. Takes every romav2-replay option (they apply to every '
        'bag). Reruns skip finished bags (manifest.json in --out).')
    parser.epilog = ('Exit status: 0 all inputs done, 3 some inputs failed, 2 bad arguments, '
                     '1 the run failed, 130 interrupted. ' + parser.epilog)
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='a rosbag2 folder, a folder searched for bags, or a glob')
    parser.add_argument('--out', required=True, type=Path, metavar='DIR',
                        help='output folder (created; outputs keep the input bag names)')
    fleet = parser.add_argument_group('fleet (Ray)')
    fleet.add_argument('--ray-address', metavar='ADDR',
                       help='Ray cluster to join (HOST:PORT, or auto); default: a local Ray '
                            'instance on 127.0.0.1 for this run')
    fleet.add_argument('--node-ip-address', metavar='IP',
                       help='with --ray-address: this machine\'s address in the cluster '
                            '(default: Ray\'s guess; 127.0.0.1 for a cluster on this machine)')
    fleet.add_argument('--workers', type=int, metavar='N',
                       help='model actors (default: the cluster\'s GPUs / --gpus-per-worker, '
                            'or CPUs / --cpus-per-worker)')
    fleet.add_argument('--gpus-per-worker', type=float, metavar='G',
                       help='GPUs per actor (default 1 if the cluster has GPUs, else 0: CPU '
                            'workers); fractions share a GPU')
    fleet.add_argument('--cpus-per-worker', type=int, default=1, metavar='C',
                       help='CPUs per actor, also its torch threads (default 1)')
    fleet.add_argument('--batch-size', type=int, default=1, metavar='N', dest='batch',
                       help='pairs per model call (romav2-replay --batch); default 1')
    fleet.add_argument('--chunk-seconds', type=float, default=0.0, metavar='S',
                       help='split bags longer than S seconds into S-second chunks processed in '
                            'parallel (docs/fleet.md: how chunks overlap); default 0: whole bags')
    fleet.add_argument('--retries', type=int, default=2, metavar='R',
                       help='times a bag is retried after its worker died (default 2)')
    fleet.add_argument('--retry-failed', action='store_true',
                       help='retry bags that failed on their input in an earlier run with the '
                            'same input and options (default: reported again, not retried)')
    # None of these changes what is written (--batch-size is the replay's own 'batch').
    parser.fleet_dests = {action.dest for action in parser._actions} - replay_dests  # noqa: SLF001
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    args.in_bag = args.out_bag = None  # set per bag by the worker
    args = replay.check_args(parser, args)
    if args.values['weights']:  # the workers may start in another folder
        args.values['weights'] = str(Path(args.values['weights']).expanduser().resolve())
    if args.trajectory is not None:
        parser.error('--trajectory is romav2-replay\'s (one bag); the output bags hold '
                     '~/odometry, and romav2-replay --trajectory writes one from a bag')
    if args.node_ip_address and not args.ray_address:
        parser.error('--node-ip-address is for --ray-address (a local instance uses 127.0.0.1)')
    if args.workers is not None and args.workers < 1:
        parser.error('--workers must be at least 1')
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        parser.error('--gpus-per-worker must not be negative')
    if args.cpus_per_worker < 1:
        parser.error('--cpus-per-worker must be at least 1')
    if args.retries < 0:
        parser.error('--retries must not be negative')
    if args.chunk_seconds < 0:
        parser.error('--chunk-seconds must not be negative')
    if args.chunk_seconds:
        reason = chunks.refusal(args)
        if reason:
            parser.error(f'--chunk-seconds: {reason}')
    return args


# --- the run -------------------------------------------------------------------------------

@dataclasses.dataclass
class _BagState:
    """The driver's view of one bag being computed."""

    bag: inputs.BagInput
    fingerprint: dict
    row: report.BagRow
    parts: list = dataclasses.field(default_factory=list)      # chunk outputs, None = to do
    summary: replay.Summary = dataclasses.field(default_factory=replay.Summary)
    failed: bool = False


class FleetRun:
    """One ``romav2-batch`` invocation: the driver's loop over Ray actors."""

    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()
        self.options = manifest.output_options(args, exclude=build_parser().fleet_dests)
        self.rows: list[report.BagRow] = []
        self.states: dict[str, _BagState] = {}
        self.progress = report.Progress()
        self.models: dict[str, dict] = {}     # 'host:pid' -> worker identity (build time)
        self.started = time.monotonic()
        self.compute_started = None
        self.ray_info: dict = {}
        self.fatal: str | None = None
        self.interrupted = False

    # ---------------------------------------------------------------- planning
    def plan(self, bags: list[inputs.BagInput], book: manifest.Manifest) -> list[Job]:
        """Rows for every bag; jobs for those that need computing."""
        jobs = []
        for bag in bags:
            row = report.BagRow(bag.name, str(bag.path))
            self.rows.append(row)
            fp = inputs.fingerprint(bag.path) if bag.path.exists() else {'missing': True}
            previous = book.previous(bag, self.out, fp, self.options)
            if previous is not None and (previous['status'] == 'done' or
                                         not self.args.retry_failed):
                row.status = 'skipped' if previous['status'] == 'done' else 'known-failed'
                for key in ('frames', 'processed', 'dropped', 'seconds', 'reason'):
                    setattr(row, key, previous.get(key, getattr(row, key)))
                continue
            meta = inputs.BagMetadata.read(bag.path) if bag.path.is_dir() else None
            if meta is not None:
                row.expected_frames = meta.expected_sets(
                    self.args.mode, self.args.topics, self.args.values['input_transport'])
            windows = chunks.plan(meta, self.args.chunk_seconds, self.args.values)
            state = _BagState(bag, fp, row, parts=[None] * len(windows))
            self.states[bag.name] = state
            row.chunks = len(windows)
            for k, window in enumerate(windows):
                chunk = None if window is None else k
                key = bag.name if chunk is None else f'{bag.name}#{k}'
                jobs.append(Job(key, bag, self.out, window, chunk))
        return jobs

    # ---------------------------------------------------------------- results
    def _finish(self, state: _BagState, result: JobResult, book: manifest.Manifest) -> None:
        row = state.row
        row.status = 'done'
        row.frames, row.processed = state.summary.sets, state.summary.processed
        row.dropped = state.summary.dropped_by_reason()
        book.record(state.bag, state.fingerprint, self.options, 'done', frames=row.frames,
                    processed=row.processed, dropped=row.dropped, seconds=round(row.seconds, 3),
                    written=result.written,
                    completed=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))

    def _fail(self, state: _BagState, reason: str, book: manifest.Manifest | None) -> None:
        """``book``: record it as an input failure (None: the machinery failed: not kept)."""
        if state.failed:
            return
        state.failed = True
        row = state.row
        row.status, row.reason = 'failed', reason
        row.frames = row.processed = 0
        for part in state.parts:
            if part:
                shutil.rmtree(Path(part).parent, ignore_errors=True)
        if book is not None:
            book.record(state.bag, state.fingerprint, self.options, 'failed', reason=reason)

    def _note_model(self, identity: dict) -> str:
        """Keep a worker process's identity (its model build time); returns 'host:pid'."""
        where = f'{identity["host"]}:{identity["pid"]}'
        self.models.setdefault(where, identity)
        return where

    def _note_worker(self, state: _BagState, result: JobResult) -> None:
        if result.worker:
            where = self._note_model(result.worker)
            if where not in state.row.workers:
                state.row.workers.append(where)
        state.row.seconds += result.seconds

    def on_result(self, job: Job, result: JobResult, merging: bool, book: manifest.Manifest,
                  merges: collections.deque) -> None:
        state = self.states[job.bag.name]
        self._note_worker(state, result)
        state.row.attempts = max(state.row.attempts, job.attempt)
        if state.failed:
            if result.part:
                shutil.rmtree(Path(result.part).parent, ignore_errors=True)
            return
        if result.error is not None:
            known = not result.error.startswith('internal error')
            self._fail(state, result.error, book if known else None)
            return
        if merging or job.chunk is None:
            if not merging:
                state.summary = result.summary
            self._finish(state, result, book)
            return
        state.parts[job.chunk] = result.part
        state.summary.add(result.summary)
        state.row.frames = state.summary.sets
        if all(state.parts):
            merges.append(dataclasses.replace(job, key=f'{job.bag.name}#merge', chunk=None,
                                              window=None, attempt=1))

    # ---------------------------------------------------------------- the loop
    def execute(self, ray, jobs: list[Job], book: manifest.Manifest) -> None:
        from ray.exceptions import ActorDiedError, RayActorError, RayError, RayTaskError
        pool = Pool(ray, self.args, len(jobs))
        self.ray_info = pool.info
        print(f'romav2-batch: {len(jobs)} job(s) for {len(self.states)} bag(s) on '
              f'{pool.info["workers"]} worker(s) ({pool.info["gpus_per_worker"]:g} GPU, '
              f'{self.args.cpus_per_worker} CPU each; Ray {ray.__version__}, '
              f'{pool.info["address"]}): building the models', file=sys.stderr, flush=True)
        pending, merges = collections.deque(jobs), collections.deque()
        try:
            while (pending or merges or pool.inflight) and not self.fatal:
                if INTERRUPT_REQUESTED.is_set():
                    raise KeyboardInterrupt
                while pool.idle and (merges or pending):
                    merging = bool(merges)
                    job = (merges or pending).popleft()
                    state = self.states[job.bag.name]
                    if not state.failed:
                        state.row.status = 'running'
                        pool.submit(job, merging, state)
                if not pool.inflight and not pool.starting:
                    self.fatal = 'no worker could build its model: ' + (
                        pool.creation_errors[0] if pool.creation_errors else 'all workers died')
                    break
                for ref in pool.ready():
                    if ref in pool.starting:
                        identity = pool.started(ref)
                        if identity:
                            self._note_model(identity)
                            self.progress.start_clock()
                            self.compute_started = self.compute_started or time.monotonic()
                        continue
                    index, job, merging = pool.inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:       # raised by our code outside its guards
                        pool.idle.append(index)
                        result = JobResult(job.key, error=f'internal error: {ray_reason(exc)}')
                    except RayActorError as exc:      # the worker process died mid-job
                        pool.died(index, job, permanently=isinstance(exc, ActorDiedError))
                        self._retry(job, merging, exc, pending, merges)
                        continue
                    except RayError as exc:           # e.g. the result object was lost
                        pool.idle.append(index)
                        self._fail(self.states[job.bag.name], ray_reason(exc), None)
                        continue
                    else:
                        pool.idle.append(index)
                    self.on_result(job, result, merging, book, merges)
                self.progress.update(self.rows, pool.live_frames())
        finally:
            pool.close()
        if self.fatal:
            for state in self.states.values():
                if state.row.status in ('pending', 'running'):
                    self._fail(state, self.fatal, None)

    def _retry(self, job: Job, merging: bool, exc: BaseException, pending: collections.deque,
               merges: collections.deque) -> None:
        """Queue ``job`` again after its worker died, first in line (or give up on it)."""
        state = self.states[job.bag.name]
        state.row.attempts = max(state.row.attempts, job.attempt)
        if job.attempt > self.args.retries:
            self._fail(state, f'worker died on all {job.attempt} attempts: {ray_reason(exc)}',
                       None)
            return
        print(f'romav2-batch: {job.key}: worker died ({ray_reason(exc)[:160]}); retrying '
              f'(attempt {job.attempt + 1})', file=sys.stderr)
        (merges if merging else pending).appendleft(dataclasses.replace(job,
                                                                        attempt=job.attempt + 1))

    def summary(self) -> dict:
        now = time.monotonic()
        compute_s = now - self.compute_started if self.compute_started else 0.0
        frames = sum(r.frames for r in self.rows if r.status in ('done', 'failed'))
        return {'command': ['romav2-batch', *sys.argv[1:]] if sys.argv else [],
                'tool': manifest.tool_version(), 'out': str(self.out),
                'elapsed_s': round(now - self.started, 3),
                'compute_s': round(compute_s, 3),
                'frames_per_s': round(frames / compute_s, 4) if compute_s > 0 else None,
                'interrupted': self.interrupted, 'error': self.fatal, 'ray': self.ray_info,
                'models': [self.models[k] for k in sorted(self.models)],
                'options': self.options}


@dataclasses.dataclass
class _Lock:
    """An exclusive lock on ``--out`` for the run (another romav2-batch there: exit 1)."""

    path: Path
    handle: object = None

    def __enter__(self):
        self.handle = open(self.path, 'a')
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.handle.close()
            raise FleetError(f'another romav2-batch is writing to {self.path.parent}') from exc
        return self

    def __exit__(self, *exc):
        self.handle.close()


def _exit_status(run: FleetRun) -> int:
    if run.interrupted:
        return EXIT_INTERRUPTED
    if run.fatal:
        return EXIT_ERROR
    if any(r.status in ('failed', 'known-failed') for r in run.rows):
        return EXIT_SOME_FAILED
    return EXIT_OK


def run_fleet(args) -> int:
    try:
        bags = inputs.find_bags(args.inputs, args.out)
    except inputs.InputsError as exc:
        print(f'romav2-batch: error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ray = None
    with _Lock(out / LOCK_FILE):
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)   # a killed run's leftovers
        book = manifest.Manifest(out)
        if book.unreadable:
            print(f'romav2-batch: {book.unreadable}', file=sys.stderr)
        run = FleetRun(args)
        try:
            jobs = run.plan(bags, book)
            skipped = len(run.rows) - len(run.states)
            print(f'romav2-batch: {len(bags)} bag(s): {len(run.states)} to compute, {skipped} '
                  f'unchanged since an earlier run', file=sys.stderr, flush=True)
            if jobs:
                ray = start_ray(args)
                run.execute(ray, jobs, book)
        except KeyboardInterrupt:
            run.interrupted = True
            for row in run.rows:
                if row.status == 'running':
                    row.status = 'pending'
        except FleetError as exc:
            run.fatal = str(exc)
        finally:
            if ray is not None:
                ray.shutdown()
            shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
        run.progress.update(run.rows, {}, final=True)
        for line in report.table(run.rows):
            print(line, file=sys.stderr)
        path = report.write_summary(out, run.summary(), run.rows)
        status = _exit_status(run)
        what = {EXIT_OK: 'all inputs done', EXIT_SOME_FAILED: 'some inputs failed',
                EXIT_ERROR: f'error: {run.fatal}', EXIT_INTERRUPTED: 'interrupted'}[status]
        print(f'romav2-batch: {what} (exit status {status}); summary: {path}', file=sys.stderr)
        return status


def _on_interrupt(signum, frame) -> None:
    INTERRUPT_REQUESTED.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``romav2-batch``)."""
    INTERRUPT_REQUESTED.clear()
    previous = {sig: signal.signal(sig, _on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_fleet(parse_args(argv))
    except FleetError as exc:
        print(f'romav2-batch: error: {exc}', file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print('romav2-batch: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == '__main__':
    sys.exit(main())
