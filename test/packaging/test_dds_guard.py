"""The DDS guard of test/dds_guard.py: skip with the reason outside the test namespace (``colcon
test`` on a robot; test_colcon_workspace.py runs that case), fail when scripts/run_tests.sh
asked for a confinement that is missing (CI never skips a DDS test silently)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import dds_guard

TEST_DIR = Path(__file__).resolve().parents[1]
VARS = ('ROMAV2_TEST_CONFINEMENT', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID')
CONFINED = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_DOMAIN_ID': '42'}


@pytest.fixture
def environment(monkeypatch):
    def set_to(interfaces=('lo',), **env_vars):
        for name in VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in env_vars.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(socket, 'if_nameindex',
                            lambda: list(enumerate(interfaces, start=1)))
    return set_to


@pytest.mark.parametrize('interfaces, env_vars, reason', [
    (('lo', 'eth0'), {}, 'ROS_AUTOMATIC_DISCOVERY_RANGE is None'),     # colcon test on a robot
    (('lo',), {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}, 'ROS_DOMAIN_ID is the default 0'),
    (('lo',), {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', 'ROS_DOMAIN_ID': '42'},
     "is 'SUBNET', not LOCALHOST"),
    (('lo', 'eth0'), CONFINED, 'has eth0, lo (a private one has only lo)'),  # a host shell
])
def test_outside_the_test_namespace_dds_tests_skip_with_the_reason(environment, interfaces,
                                                                  env_vars, reason):
    environment(interfaces, **env_vars)
    action, why = dds_guard.dds_guard_verdict()
    assert action is pytest.skip and 'private network namespace' in why and reason in why, why


@pytest.mark.parametrize('interfaces, env_vars, reason', [
    (('lo', 'eth0'), {'ROMAV2_TEST_CONFINEMENT': 'netns', **CONFINED}, 'a private one has only'),
    (('lo',), {'ROMAV2_TEST_CONFINEMENT': 'netns', 'ROS_DOMAIN_ID': '42'}, 'not LOCALHOST'),
    (('lo', 'eth0'), {'ROMAV2_TEST_CONFINEMENT': 'localhost',
                      'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}, 'default 0'),
])
def test_under_the_test_runner_a_missing_confinement_fails(environment, interfaces, env_vars,
                                                           reason):
    environment(interfaces, **env_vars)
    action, why = dds_guard.dds_guard_verdict()
    assert action is pytest.fail and why.startswith('ROMAV2_TEST_CONFINEMENT=') and reason in why


@pytest.mark.parametrize('interfaces, env_vars', [
    (('lo',), {'ROMAV2_TEST_CONFINEMENT': 'netns', **CONFINED}),       # scripts/run_tests.sh
    (('lo', 'eth0'), {'ROMAV2_TEST_CONFINEMENT': 'localhost', **CONFINED}),  # its fallback
    (('lo',), CONFINED),                                               # a namespace of one's own
])
def test_confined_dds_tests_run(environment, interfaces, env_vars):
    environment(interfaces, **env_vars)
    assert dds_guard.dds_guard_verdict() == (None, '')


def test_the_fixture_fails_a_test_whose_confinement_is_missing(tmp_path):
    """End to end: a guarded test never runs its body, and the run fails."""
    (tmp_path / 'test_probe.py').write_text(
        'def test_probe(ros_env_guard):\n'
        '    raise AssertionError("the guard let an unconfined DDS test run")\n')
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env.update(ROMAV2_TEST_CONFINEMENT='netns', ROS_DOMAIN_ID='42',
               PYTHONPATH=os.pathsep.join(filter(None, [str(TEST_DIR), env.get('PYTHONPATH')])))
    out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'conftest', '-p',
                          'no:cacheprovider', '--rootdir', str(tmp_path), 'test_probe.py'],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and '1 error' in out.stdout, out.stdout + out.stderr
    assert 'ROMAV2_TEST_CONFINEMENT=netns but' in out.stdout
    assert 'the guard let' not in out.stdout
