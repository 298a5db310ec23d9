"""Two-process test harness: the installed ``romav2_node`` as a subprocess, and a tester node.

Both processes use the Fast DDS large-image profile (config/fastdds_large_images.xml) so
640 x 480 images survive best-effort subscriptions. The node finds the oracle matchers through
PYTHONPATH (this folder).

Connected means matched on the publishing side. DDS matches each writer-reader pair on both
sides independently, and a volatile message written before the writer has matched a reader
never reaches it; seeing the other side in the graph (``count_publishers`` /
``count_subscribers``, from the receiver or from a third process) says nothing about that
match. So before traffic is measured the tester waits for ``publisher.get_subscription_count()``
of its own publishers (the inputs it sends), and for the node's ``/diagnostics`` report
``subscribers.<output>`` (the node's publishers' matched counts) for what the node sends:
:meth:`Tester.wait_node_subscribers`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / 'config' / 'fastdds_large_images.xml'
NODE = 'romav2_node'
#: Another ``romav2_node`` to test, run as it is (its own shebang), e.g. a colcon install's
#: ``install/romav2_ros/lib/romav2_ros/romav2_node`` (test/packaging/test_colcon_workspace.py).
#: Default: the venv's console script, run with this test's Python.
EXECUTABLE_VAR = 'ROMAV2_NODE_EXECUTABLE'


def profile_env() -> dict:
    """Fast DDS 2.x (Jazzy) reads FASTRTPS_*, Fast DDS 3.x FASTDDS_*: set both."""
    return {'FASTRTPS_DEFAULT_PROFILES_FILE': str(PROFILE),
            'FASTDDS_DEFAULT_PROFILES_FILE': str(PROFILE)}


#: Variables that hold search paths: extra values are prepended, not replacing them.
PATH_VARIABLES = ('PYTHONPATH', 'LD_LIBRARY_PATH', 'AMENT_PREFIX_PATH')


def with_env(env: dict, extra: dict | None) -> dict:
    """``env`` with ``extra`` set, search paths prepended."""
    out = dict(env)
    for key, value in (extra or {}).items():
        out[key] = os.pathsep.join(filter(None, [value, env.get(key)])) \
            if key in PATH_VARIABLES else value
    return out


def node_env() -> dict:
    env = dict(os.environ)  # keep the ROS wheels' bootstrap variables together
    here = Path(__file__).parent     # oracle_matchers, and test/ for matcher_doubles
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(here), str(here.parent),
                                                      env.get('PYTHONPATH')]))
    env.update(profile_env())
    env['PYTHONUNBUFFERED'] = '1'
    return env


class NodeProcess:
    """``<executable> --ros-args [--params-file F] -p k:=v ...`` with its output in ``log``."""

    def __init__(self, params: dict, log: Path, executable: str = 'romav2_node',
                 env: dict | None = None, params_file: Path | None = None):
        if os.environ.get(EXECUTABLE_VAR):   # an installed romav2_node; its siblings beside it
            args = [str(Path(os.environ[EXECUTABLE_VAR]).with_name(executable)), '--ros-args']
        else:
            exe = shutil.which(executable, path=str(Path(sys.executable).parent)) or executable
            args = [sys.executable, exe, '--ros-args']
        if params_file is not None:   # first: the -p overrides below win over the file
            args += ['--params-file', str(params_file)]
        for k, v in params.items():
            args += ['-p', f'{k}:={str(v).lower() if isinstance(v, bool) else v}']
        self.log = log
        self._out = open(log, 'w')
        self.proc = subprocess.Popen(args, env=with_env(node_env(), env), stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text()

    def stop(self, sig=signal.SIGINT, timeout=20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # the node's threads' stacks into its log (faulthandler), then kill it
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


class Tester:
    __test__ = False  # not a test class

    """An rclpy node in the test process: publishers, recording subscriptions, spin helpers."""

    def __init__(self):
        os.environ.update(profile_env())
        rclpy.init()
        self.node = Node('romav2_tester')
        self.received: dict[str, list] = {}
        self.diag = []
        self._diag_sub = None

    def reliable(self, depth=50):
        return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)

    def publisher(self, cls, topic, qos):
        return self.node.create_publisher(cls, topic, qos)

    def record(self, cls, topic, key=None):
        key = key or topic
        self.received[key] = []
        self.node.create_subscription(cls, topic, self.received[key].append, self.reliable())

    def record_diagnostics(self):
        from diagnostic_msgs.msg import DiagnosticArray
        if self._diag_sub is None:
            self._diag_sub = self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                                           self.diag.append, 50)

    def diag_values(self, suffix: str) -> dict:
        """key -> value of the latest status whose name ends with ``suffix``."""
        for arr in reversed(self.diag):
            for st in arr.status:
                if st.name.endswith(suffix):
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def wait_node_subscribers(self, keys, n: int = 1, timeout: float = 60.0,
                              node: str = f'/{NODE}'):
        """Wait until the node ``node`` (fully qualified name) reports, in a /diagnostics
        message received after this call, that each of its output publishers ``keys``
        (output names, ``tf``) has matched at least ``n`` subscriptions. Subscribes to
        /diagnostics first if the test has not; a message from before the call may describe
        publishers since destroyed (a lifecycle cleanup)."""
        self.record_diagnostics()
        start = len(self.diag)
        self.spin_until(lambda: subscribers_reported(self.diag[start:], keys, n, node),
                        timeout, lambda: f'{node} to report subscribers.* >= {n} of {list(keys)} '
                        f'(latest: {reported_subscribers(self.diag[start:], node)})')

    def spin_until(self, predicate, timeout: float, what='condition'):
        """Spin until ``predicate()``; ``what``: text (or a callable giving it) for the
        timeout message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            rclpy.spin_once(self.node, timeout_sec=0.05)
        raise AssertionError(f'timed out after {timeout} s waiting for '
                             f'{what() if callable(what) else what}')

    def spin_for(self, seconds: float):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def set_parameter(self, name, value, node=f'/{NODE}'):
        from rclpy.parameter import Parameter
        from rclpy.parameter_client import AsyncParameterClient
        client = AsyncParameterClient(self.node, node)
        self.spin_until(lambda: client.services_are_ready(), 20, 'parameter services')
        future = client.set_parameters([Parameter(name, value=value)])
        self.spin_until(future.done, 10, f'set {name}')
        return future.result().results[0]

    def close(self):
        self.node.destroy_node()
        rclpy.try_shutdown()


def reported_subscribers(arrays, node: str = f'/{NODE}') -> dict | None:
    """{output key: matched subscriptions} of the latest ``<node>: processing`` status in
    ``arrays`` (diagnostic_msgs/DiagnosticArray, oldest first); None when there is none."""
    prefix = 'subscribers.'
    for arr in reversed(arrays):
        for st in arr.status:
            if st.name == f'{node}: processing':
                return {kv.key[len(prefix):]: int(kv.value) for kv in st.values
                        if kv.key.startswith(prefix)}
    return None


def subscribers_reported(arrays, keys, n: int = 1, node: str = f'/{NODE}') -> bool:
    """True when the latest report of ``node`` in ``arrays`` has ``subscribers.<key> >= n``
    for every key in ``keys`` (a key not reported: no publisher, not matched)."""
    counts = reported_subscribers(arrays, node)
    return counts is not None and all(counts.get(k, 0) >= n for k in keys)


class LifecycleClient:
    """``get_state`` / ``change_state`` / ``get_available_transitions`` of a managed node,
    called as a lifecycle manager does (from another process)."""

    def __init__(self, tester: Tester, node: str = f'/{NODE}'):
        from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
        self.tester = tester
        self.clients = {name: tester.node.create_client(srv, f'{node}/{name}') for name, srv in
                        (('get_state', GetState), ('change_state', ChangeState),
                         ('get_available_transitions', GetAvailableTransitions))}
        tester.spin_until(lambda: all(c.service_is_ready() for c in self.clients.values()),
                          60, 'the lifecycle services')
        # A service is "ready" once it sees our requests; its replies can still be lost until
        # its reply writer has matched us too (DDS discovery is per endpoint). So each service
        # first answers a request without side effects (for change_state: an unknown
        # transition label, refused), resent until one reply arrives.
        ping = ChangeState.Request()
        ping.transition.label = 'romav2_harness_ping'
        for name, request in (('get_state', GetState.Request()),
                              ('get_available_transitions', GetAvailableTransitions.Request()),
                              ('change_state', ping)):
            self._until_answered(name, request, 60)

    def _until_answered(self, name, request, timeout, resend_s=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            future = self.clients[name].call_async(request)
            resend = min(deadline, time.monotonic() + resend_s)
            while time.monotonic() < resend and not future.done():
                rclpy.spin_once(self.tester.node, timeout_sec=0.05)
            if future.done():
                return future.result()
        raise AssertionError(f'{name}: no reply within {timeout} s')

    def _call(self, name, request, timeout=120):
        future = self.clients[name].call_async(request)
        self.tester.spin_until(future.done, timeout, name)
        return future.result()

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState
        return self._call('get_state', GetState.Request()).current_state.label

    def transitions(self) -> set:
        from lifecycle_msgs.srv import GetAvailableTransitions
        reply = self._call('get_available_transitions', GetAvailableTransitions.Request())
        return {t.transition.label for t in reply.available_transitions}

    def change(self, label: str) -> bool:
        """Trigger the transition named ``label`` (configure, activate, ...); its success."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        ids = {'configure': Transition.TRANSITION_CONFIGURE,
               'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE,
               'cleanup': Transition.TRANSITION_CLEANUP,
               'shutdown': {'unconfigured': Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                            'inactive': Transition.TRANSITION_INACTIVE_SHUTDOWN,
                            'active': Transition.TRANSITION_ACTIVE_SHUTDOWN}}
        transition = ids[label]
        if isinstance(transition, dict):
            transition = transition[self.state()]
        request = ChangeState.Request()
        request.transition.id = transition
        return self._call('change_state', request).success


#: A TF listener process (a robot's other nodes): ``python -c TF_LISTENER OUT SECONDS``
#: writes every /tf transform it receives as a JSON line to OUT.
TF_LISTENER = textwrap.dedent('''
    import json, sys, time, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage
    rclpy.init()
    node = rclpy.create_node('tf_listener')
    out = open(sys.argv[1], 'w')
    def got(msg):
        for t in msg.transforms:
            tr = t.transform.translation
            out.write(json.dumps([t.header.frame_id, t.child_frame_id, t.header.stamp.sec,
                                  t.header.stamp.nanosec, tr.x, tr.y, tr.z]) + '\\n')
            out.flush()
    node.create_subscription(TFMessage, '/tf', got,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
''')
