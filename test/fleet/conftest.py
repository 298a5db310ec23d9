"""Fixtures of the romav2-batch tests: small bags, replay references, a session Ray head.

Ray runs only on loopback: inside scripts/run_tests.sh's private network namespace (only
``lo``), with ``--node-ip-address 127.0.0.1``, no dashboard, no usage stats. The session's
head is started by ``ray start --head --block`` in its own process group, which the fixture
ends (SIGTERM, then SIGKILL to that group only).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPLAY_TESTS = HERE.parent / 'replay'
sys.path.insert(0, str(REPLAY_TESTS))  # replay_doubles: bag builders and the oracle

import fleet_helpers  # noqa: E402  (needs the path above)

BIN = Path(sys.executable).parent
HEAD_START_TIMEOUT_S = 90


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())   # this network namespace's


@pytest.fixture(scope='session')
def ray_guard():
    """Refuse to start Ray outside a network namespace that has only ``lo``."""
    if _interfaces() != ['lo']:
        pytest.fail('the fleet tests start Ray: run them through scripts/run_tests.sh (a private '
                    f'network namespace with only lo; here: {_interfaces()})')


@pytest.fixture(scope='session')
def ray_env(ray_guard, tmp_path_factory):
    """Environment of every Ray process of the session (head, drivers, workers): no usage
    stats, a token of its own (not ~/.ray), this folder's doubles importable."""
    token = tmp_path_factory.mktemp('ray-auth') / 'auth_token'
    env = {'RAY_USAGE_STATS_ENABLED': '0', 'RAY_AUTH_MODE': 'token',
           'RAY_AUTH_TOKEN_PATH': str(token),
           'PYTHONPATH': os.pathsep.join(filter(None, [str(REPLAY_TESTS), str(HERE.parent),
                                                       os.environ.get('PYTHONPATH')]))}
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the in-process drivers forward PYTHONPATH to their workers
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def ray_head(ray_env, tmp_path_factory):
    """``127.0.0.1:PORT`` of a 2-CPU Ray head (``ray start --head``) for the whole session."""
    port = _free_port()
    temp = Path(f'/tmp/romav2-ray-{os.getpid()}')   # short: Ray's socket paths must fit
    log = open(tmp_path_factory.mktemp('ray-head') / 'ray-start.log', 'w')
    proc = subprocess.Popen(
        [str(BIN / 'ray'), 'start', '--head', '--block', '--node-ip-address', '127.0.0.1',
         '--port', str(port), '--num-cpus', '2', '--num-gpus', '0', '--include-dashboard',
         'false', '--disable-usage-stats', '--temp-dir', str(temp)],
        env={**os.environ, **ray_env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    address = f'127.0.0.1:{port}'
    try:
        fleet_helpers.wait_for_head(address, proc, HEAD_START_TIMEOUT_S)
        yield address
    finally:
        _end_group(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the head's process group (only it: we started it), SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fleet_helpers.group_alive(proc.pid):
        time.sleep(0.1)
