"""The Ray side of ``romav2-batch`` (:mod:`.cli` drives the run): connecting to a cluster or
starting a local instance on 127.0.0.1, sizing the pool, the pool of long-lived model actors
(:class:`~.worker.BagWorker`) with the jobs in flight on them, the workers' progress posts,
and Ray's errors as one line. Ray is imported only when a run has work to do.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import time
from pathlib import Path

from romav2_ros import bag_io
from romav2_ros.fleet import FleetError, report
from romav2_ros.fleet.worker import BagWorker, Job

#: Worker deaths one actor survives (Ray restarts it; each restart rebuilds the model).
MAX_RESTARTS_PER_WORKER = 5
#: Environment variables handed to the workers (Ray ``runtime_env``): matcher plugins and
#: test hooks (``ROMAV2_*``), the import path of factories, the torch hub cache.
FORWARDED_ENV_PREFIXES = ('ROMAV2_',)
FORWARDED_ENV = ('PYTHONPATH', 'TORCH_HOME')
#: Object store of a local Ray instance: only job descriptions and summaries cross it.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)}
    if 'PYTHONPATH' in env:  # workers may start in another folder
        env['PYTHONPATH'] = os.pathsep.join(str(Path(p).resolve()) if p else p
                                            for p in env['PYTHONPATH'].split(os.pathsep))
    return env


def start_ray(args):
    """``ray`` connected to ``--ray-address``, or to a new local instance on 127.0.0.1."""
    os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
    try:
        import ray
    except ImportError as exc:
        raise FleetError('Ray is not installed: pip install ".[fleet]" (or -r '
                         'requirements/fleet.txt)') from exc
    common = {'runtime_env': {'env_vars': _worker_env()}, 'logging_level': logging.WARNING,
              'log_to_driver': True}
    try:
        if args.ray_address:
            ray.init(address=args.ray_address, _node_ip_address=args.node_ip_address, **common)
        else:
            ray.init(address='local', _node_ip_address='127.0.0.1', include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ... alike
        cause = exc.__cause__ or exc
        hint = ('; a cluster with token authentication needs RAY_AUTH_MODE=token and its token '
                'here (docs/fleet.md)' if 'uthentication' in str(cause) else '')
        raise FleetError(f'cannot start Ray ({args.ray_address or "local"}): '
                         f'{bag_io.one_line(exc)}{hint}') from exc
    return ray


def worker_count(args, resources: dict, jobs: int) -> tuple[int, float]:
    """(actors, GPUs per actor): ``--workers``, else what the cluster's ``resources`` hold,
    but no more than ``jobs`` to do."""
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get('GPU', 0) >= 1 else 0.0
    if args.workers is not None:
        return args.workers, gpus
    if gpus > 0:
        count = int(resources.get('GPU', 0) // gpus)
    else:
        count = int(resources.get('CPU', 1) // args.cpus_per_worker)
    return max(1, min(count, jobs)), gpus


class Pool:
    """The model actors: starting, idle, and the jobs in flight on them."""

    def __init__(self, ray, args, jobs: int):
        self.ray = ray
        resources = ray.cluster_resources()
        count, gpus = worker_count(args, resources, jobs)
        actor_class = ray.remote(num_cpus=args.cpus_per_worker, num_gpus=gpus,
                                 max_restarts=MAX_RESTARTS_PER_WORKER,
                                 max_task_retries=0)(BagWorker)
        board_name = f'romav2-batch-progress-{os.getpid()}-{time.time_ns()}'
        self.board = ray.remote(num_cpus=0)(report.ProgressBoard).options(
            name=board_name).remote()
        self.actors = [actor_class.remote(args, _BoardPost(board_name), args.cpus_per_worker)
                       for _ in range(count)]
        self.info = {'version': ray.__version__, 'address': args.ray_address or 'local',
                     'nodes': sum(n['Alive'] for n in ray.nodes()),
                     'resources': {k: v for k, v in resources.items()
                                   if k in ('CPU', 'GPU', 'memory')},
                     'workers': count, 'gpus_per_worker': gpus,
                     'cpus_per_worker': args.cpus_per_worker}
        self.starting = {actor.describe.remote(): i for i, actor in enumerate(self.actors)}
        self.idle: list[int] = []
        self.inflight: dict = {}              # ref -> (actor index, job, merging)
        self.avoid = collections.defaultdict(set)   # job key -> actors it died on
        self.creation_errors: list[str] = []

    def submit(self, job: Job, merging: bool, state) -> None:
        """Start ``job`` on an idle actor, one it has not died on if there is one (``state``:
        the driver's view of the job's bag; a merge takes its chunk outputs and counts)."""
        index = next((i for i in self.idle if i not in self.avoid[job.key]), self.idle[0])
        self.idle.remove(index)
        actor = self.actors[index]
        if merging:
            ref = actor.merge.remote(job, list(state.parts),
                                     sum(state.summary.role_counts.values()))
        else:
            ref = actor.run.remote(job)
        self.inflight[ref] = (index, job, merging)

    def ready(self) -> list:
        refs = [*self.inflight, *self.starting]
        return self.ray.wait(refs, num_returns=1, timeout=0.5)[0]

    def started(self, ref) -> dict | None:
        """A model build finished: the actor's identity, or None if it failed."""
        from ray.exceptions import RayError
        index = self.starting.pop(ref)
        try:
            identity = self.ray.get(ref)
        except RayError as exc:
            self.creation_errors.append(ray_reason(exc))
            return None
        self.idle.append(index)
        return identity

    def died(self, index: int, job: Job, permanently: bool) -> None:
        """The actor died under ``job``; Ray restarts it unless it is out of restarts. Calls
        on a restarting actor fail at once, except with task retries: this one waits until
        the new process has built its model, then the actor is idle again."""
        self.avoid[job.key].add(index)
        if not permanently:
            ref = self.actors[index].describe.options(max_task_retries=-1).remote()
            self.starting[ref] = index

    def live_frames(self) -> dict:
        """Bag name -> frames done so far by its jobs in flight (the current attempts)."""
        try:
            jobs = self.ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort
            return {}
        live = collections.Counter()
        for _, job, merging in self.inflight.values():
            seen = jobs.get(job.key)
            if not merging and seen and seen[0] == job.attempt:
                live[job.bag.name] += seen[1]
        return live

    def close(self) -> None:
        """End the actors and wait for their jobs to stop: after an interrupt no worker may
        still write into --out while the driver cleans .partial."""
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        if self.inflight:
            self.ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=10)


class _BoardPost:
    """The workers' ``report`` callable: posts to the progress board, found by name (an actor
    handle among an actor's constructor arguments would pin it in the object store)."""

    def __init__(self, name: str):
        self.name, self.board = name, None

    def __call__(self, *item) -> None:
        if self.board is None:
            import ray
            self.board = ray.get_actor(self.name)
        self.board.report.remote(*item)


def ray_reason(exc: BaseException) -> str:
    """A Ray error as one line: the exception our code raised when it carries one (a task's
    ``cause``; for a failed actor ``__init__``, the last line of Ray's traceback text)."""
    cause = getattr(exc, 'cause', None)
    if isinstance(cause, BaseException):
        return bag_io.one_line(cause)
    lines = [line.strip() for line in re.sub(r'\x1b\[[0-9;]*m', '', str(exc)).splitlines()
             if line.strip()]
    text = lines[-1] if getattr(exc, 'actor_init_failed', False) and lines else \
        (lines[0] if lines else '')
    return f'{type(exc).__name__}: {text}'
