"""The managed node's bond to a Nav2 lifecycle manager (romav2_ros/bond.py), between processes:
``romav2_lifecycle_node`` driven through its lifecycle services as the manager drives it, and the
manager's end of the bond played by bond_sister.py, written from bondcpp's protocol.

The PyPI wheels lack the ``bond`` message package: the tests build ``bond/msg/Status`` from its
definition (msg_package_build.py) and check its type hash. Without the package the node
activates all the same and says once what a Nav2 lifecycle manager then needs.
"""
import importlib.util
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import msg_package_build
from node_harness import LifecycleClient, NodeProcess, Tester, node_env, with_env

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures('ros_env_guard')]

EXE = 'romav2_lifecycle_node'
NODE = 'romav2_node'
PARAMS = {'mode': 'stereo', 'model_source': 'oracle_matchers:stereo'}
#: Nav2 lifecycle_manager's default bond_timeout [s]: it waits half of it for the bond to
#: form after activating a node, and takes the node as dead after that long without heartbeat.
BOND_TIMEOUT_S = 4.0
#: bond/msg/Constants DEFAULT_CONNECT_TIMEOUT [s]: an end that no sister answered gives up.
CONNECT_TIMEOUT_S = 10.0
#: What the ends of Nav2's servers (nav2_util::LifecycleNode) announce [s].
SERVER_HEARTBEAT_PERIOD_S, SERVER_HEARTBEAT_TIMEOUT_S = 0.1, 4.0
#: ros/bond_core (ROS 2), bond/msg/Status.msg
STATUS = """std_msgs/Header header
string id  # ID of the bond
string instance_id  # Unique ID for an individual in a bond
bool active

# Including the timeouts for the bond makes it easier to debug mis-matches
# between the two sides.
float32 heartbeat_timeout
float32 heartbeat_period
"""
FORMED = 'bond to the lifecycle manager formed'
MISSING = 'no bond to a lifecycle manager'


@pytest.fixture(scope='module')
def bond_env(tmp_path_factory):
    env = msg_package_build.build(tmp_path_factory.mktemp('bond'), 'bond', {'Status': STATUS},
                                  ('std_msgs',))
    if env:   # our build: the type hash must be that of bond/msg/Status
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore
        store = get_typestore(Stores.ROS2_JAZZY)
        if 'bond/msg/Status' not in store.types:   # rosbags 0.11's Jazzy store lacks bond:
            # hash the upstream definition with rosbags (independent of rosidl's generator)
            store.register(get_types_from_msg(STATUS, 'bond/msg/Status'))
        assert msg_package_build.built_hash(env, 'bond', 'Status') == \
            store.hash_rihs01('bond/msg/Status')
    return env


class Sister:
    """bond_sister.py (the manager's end) as a process: commands in, events out, strictly in
    the expected order (an unexpected event, e.g. a break, fails the test where it shows)."""

    def __init__(self, env: dict):
        script = Path(__file__).with_name('bond_sister.py')
        self.proc = subprocess.Popen([sys.executable, str(script), NODE, str(BOND_TIMEOUT_S)],
                                     env=with_env(node_env(), env), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next('ready', timeout=60)

    def _read(self):
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next(self, *kinds: str, timeout: float) -> dict:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'no {kinds} from the manager\'s end within {timeout} s')
        assert event['event'] in kinds, event
        return event

    def command(self, text: str, *kinds: str, timeout: float = 10.0) -> dict:
        self.proc.stdin.write(text + '\n')
        self.proc.stdin.flush()
        return self.next(*kinds, timeout=timeout)

    def bond(self) -> dict:
        """The manager's end after activation: ``formed`` (checked), with the node's fields."""
        event = self.command('bond', 'formed', 'not_formed', timeout=BOND_TIMEOUT_S + 10)
        assert event['event'] == 'formed' and event['after_s'] < BOND_TIMEOUT_S / 2, event
        return event

    def observed(self) -> dict:
        """Instance id of each of the node's ends -> what arrived from it (bond_sister.py)."""
        return self.command('observed', 'observed')['seen']

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write('quit\n')
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bond_publishers(tester: Tester) -> int:
    """Publishers on /bond, once the tester has discovered the node's /diagnostics publisher
    (created at configure), so that a count of 0 is not a discovery delay."""
    tester.spin_until(lambda: tester.node.count_publishers('/diagnostics') > 0, 30,
                      'the node\'s /diagnostics publisher')
    return tester.node.count_publishers('/bond')


def wait_bond_publishers(tester: Tester, count: int, what: str) -> None:
    """Until ``count`` publishers are on /bond (the node's end, the manager's end)."""
    tester.spin_until(lambda: tester.node.count_publishers('/bond') == count, 10, what)


def check_formed(formed: dict) -> None:
    """The node's end announces what Nav2's servers announce."""
    assert formed['id'] == NODE and formed['active']
    uuid.UUID(formed['instance_id'])
    assert formed['heartbeat_period'] == pytest.approx(SERVER_HEARTBEAT_PERIOD_S,
                                                       rel=1e-6)       # float32 on the wire
    assert formed['heartbeat_timeout'] == SERVER_HEARTBEAT_TIMEOUT_S


def test_bond_formed_at_activation_broken_at_deactivation_and_by_a_crash(tester, tmp_path,
                                                                         bond_env):
    node = NodeProcess(PARAMS, tmp_path / 'node.log', executable=EXE, env=bond_env)
    sister = Sister(bond_env)
    try:
        lc = LifecycleClient(tester)
        assert lc.change('configure')
        assert bond_publishers(tester) == 0                   # no bond before activation

        # Activated, the node's end forms the bond within the manager's wait; heartbeats.
        assert lc.change('activate')
        first = sister.bond()
        check_formed(first)
        wait_bond_publishers(tester, 2, 'both ends')
        tester.spin_for(1.5)
        seen = sister.observed()[first['instance_id']]
        assert seen['false'] == 0 and seen['true'] >= 5
        # heartbeat every 0.1 s; 1 s allows for a loaded 2-core machine (the manager: 4 s)
        assert seen['max_gap_s'] < 1.0

        # Deactivated, the node breaks the bond: the manager's end sees the break at once (not
        # a heartbeat timeout), and its acknowledgement ends the break (well before the 2 s
        # disconnect timeout: a few active=false, no heartbeat after the first).
        t_deactivate = time.monotonic()
        assert lc.change('deactivate')
        broken = sister.next('broken', timeout=BOND_TIMEOUT_S)
        assert broken['reason'] == 'sister_dead' and broken['t'] - t_deactivate < 1.0
        sister.command('unbond', 'unbonded')
        wait_bond_publishers(tester, 0, 'the node\'s end released')
        seen = sister.observed()[first['instance_id']]
        assert seen['last_true'] < seen['first_false']
        assert seen['last_false'] - seen['first_false'] < 1.0

        # Activated again: a new end. The manager breaks first (it shuts down): the node
        # acknowledges once and its heartbeats stop.
        assert lc.change('activate')
        second = sister.bond()
        check_formed(second)
        assert second['instance_id'] != first['instance_id']
        t_unbond = sister.command('unbond', 'unbonded')['broke_at']
        tester.spin_for(1.0)
        seen = sister.observed()[second['instance_id']]
        assert seen['false'] == 1 and seen['first_false'] > t_unbond
        assert seen['last_true'] < seen['first_false']

        # Deactivating with the bond already broken releases the end. Activated again, the
        # bond forms; the node process dies: the manager's end times out after bond_timeout.
        wait_bond_publishers(tester, 1, 'the manager\'s end gone, the node\'s kept')
        assert lc.change('deactivate')
        wait_bond_publishers(tester, 0, 'the node\'s end released')
        assert lc.change('activate')
        check_formed(sister.bond())
        tester.spin_for(0.5)
        t_kill = time.monotonic()
        node.proc.kill()
        broken = sister.next('broken', timeout=BOND_TIMEOUT_S + 10)
        assert broken['reason'] == 'heartbeat_timeout'
        # bond_timeout after the last heartbeat (before the kill); 1 s for a loaded machine
        assert broken['t'] - t_kill < BOND_TIMEOUT_S + 1.0
    finally:
        sister.close()
        node.stop(signal.SIGINT)
    log = node.output()
    assert log.count(FORMED) == 3, log
    assert log.count('the lifecycle manager broke the bond') == 1, log


def test_without_a_manager_heartbeats_stop_and_shutdown_breaks_the_bond(tester, tmp_path,
                                                                         bond_env):
    node = NodeProcess(PARAMS, tmp_path / 'node.log', executable=EXE, env=bond_env)
    sister = Sister(bond_env)   # only watching at first: no manager's end
    try:
        lc = LifecycleClient(tester)
        assert lc.change('configure')
        t_activate = time.monotonic()
        assert lc.change('activate')
        t_active = time.monotonic()
        tester.spin_until(lambda: len(sister.observed()) == 1, 10, 'the node\'s heartbeats')
        tester.spin_for(t_active + CONNECT_TIMEOUT_S + 2.0 - time.monotonic())
        (seen,) = sister.observed().values()
        assert seen['false'] == 0
        # the last heartbeat CONNECT_TIMEOUT_S after the activation (heartbeats every 0.1 s;
        # 1 s for a loaded machine), none in the 2 s after it
        assert t_activate + CONNECT_TIMEOUT_S - 0.5 < seen['last_true'] < \
            t_active + CONNECT_TIMEOUT_S + 1.0
        assert lc.change('deactivate')
        wait_bond_publishers(tester, 0, 'the node\'s end released')

        # A shutdown transition from active breaks the bond as deactivation does.
        assert lc.change('activate')
        formed = sister.bond()
        wait_bond_publishers(tester, 2, 'both ends')
        assert lc.change('shutdown') and lc.state() == 'finalized'
        assert sister.next('broken', timeout=BOND_TIMEOUT_S)['reason'] == 'sister_dead'
        sister.command('unbond', 'unbonded')
        wait_bond_publishers(tester, 0, 'the node\'s end released')
        seen = sister.observed()[formed['instance_id']]
        assert seen['last_true'] < seen['first_false']
    finally:
        sister.close()
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.output()


@pytest.fixture
def hidden_bond(tmp_path) -> dict:
    """An environment in which ``bond`` does not import: the wheels' own (they lack it), or
    on a ROS install a package ``bond`` that raises ImportError first on PYTHONPATH."""
    if importlib.util.find_spec('bond') is None:
        return {}
    shadow = tmp_path / 'shadow'
    (shadow / 'bond').mkdir(parents=True)
    (shadow / 'bond' / '__init__.py').write_text('raise ImportError("hidden by the test")\n')
    return {'PYTHONPATH': str(shadow)}


@pytest.mark.parametrize('case', ['package_missing', 'heartbeat_period_zero'])
def test_no_bond_and_the_node_still_activates(tester, tmp_path, request, case):
    if case == 'package_missing':
        env, params = request.getfixturevalue('hidden_bond'), PARAMS
    else:
        env = request.getfixturevalue('bond_env')
        params = {**PARAMS, 'bond_heartbeat_period': 0.0}
    node = NodeProcess(params, tmp_path / 'node.log', executable=EXE, env=env)
    try:
        lc = LifecycleClient(tester)
        assert lc.change('configure')
        for _ in range(2):   # said once, not at every activation
            assert lc.change('activate') and lc.state() == 'active'
            assert bond_publishers(tester) == 0
            assert lc.change('deactivate')
    finally:
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.output()
    log = node.output()
    assert FORMED not in log
    if case == 'package_missing':
        assert log.count(MISSING) == 1 and 'bond_timeout: 0.0' in log, log
    else:
        assert MISSING not in log, log
