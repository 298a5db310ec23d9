"""The managed node's side of a bond with a Nav2 lifecycle manager (bondcpp's protocol).

Nav2's ``lifecycle_manager``, right after activating each node of its ``node_names``, forms a
*bond* with it (ROS package ``bond``, as bondcpp implements it) and watches it: when no
heartbeat comes for ``bond_timeout`` seconds it takes the node as crashed and brings all its
nodes down. Nav2's servers (``nav2_util::LifecycleNode``) create their side of the bond at
activation and destroy it at deactivation; :class:`ManagedNodeBond` is that side for an rclpy
node. The protocol, as both ends speak it:

=========  ===============================================================================
topic      ``bond``, relative: ``/<namespace>/bond``, shared by every bond of the namespace.
           So the manager runs in the node's namespace and lists the node by its bare name.
message    ``bond/msg/Status``: ``header.stamp`` (steady clock), ``id`` (which bond: the
           node's name, the manager's ``node_names`` entry), ``instance_id`` (which end: a
           random UUID, new at each activation), ``active``, and ``heartbeat_timeout`` /
           ``heartbeat_period`` in s (announced for debugging only; each end keeps its own).
           Messages of another bond (``id``) or of this end (``instance_id``) are ignored.
QoS        publisher reliable, volatile, keep last 5; subscription reliable, volatile, keep
           last 100 (bondcpp's).
timing     ``active=true`` every ``heartbeat_period`` s (Nav2's servers: 0.1 s). The manager
           waits ``bond_timeout / 2`` s for the first one after it activated the node, and
           declares the node dead after ``bond_timeout`` s (default 4) without one. Like
           Nav2's servers, this end never times the manager out: it would stop its heartbeats,
           and a manager that was only slow would then take the node for dead
           (``heartbeat_timeout`` is announced as 4 s, not enforced).
=========  ===============================================================================

States (bondcpp's state machine, less the heartbeat timeout this end does not enforce):

* ``WAITING_FOR_SISTER`` (after :meth:`~ManagedNodeBond.start`): heartbeats go out.
  The sister's ``active=true`` -> ``ALIVE`` (the bond is formed). No sister within
  ``CONNECT_TIMEOUT_S`` (no manager, e.g. ``autostart:=true``) -> ``DEAD``, heartbeats stop.
* ``ALIVE``: heartbeats go on. :meth:`~ManagedNodeBond.stop` -> ``AWAIT_SISTER_DEATH``.
* ``AWAIT_SISTER_DEATH``: ``active=false`` at once and every ``DEAD_PUBLISH_PERIOD_S`` until
  the sister answers ``active=false`` or ``DISCONNECT_TIMEOUT_S`` passed -> ``DEAD``.
* The sister's ``active=false`` while ``WAITING_FOR_SISTER`` or ``ALIVE`` (the manager broke
  the bond first: it is shutting down) -> ``DEAD``, acknowledged with one ``active=false``.
  :meth:`~ManagedNodeBond.stop` while ``WAITING_FOR_SISTER`` -> ``DEAD`` with one
  ``active=false``.
* ``DEAD``: nothing is published. The topic endpoints are destroyed once the node stopped
  the bond and the break is complete.

The ``bond`` message package comes with ROS installs that have Nav2; the PyPI ROS wheels lack
it. Without it :meth:`~ManagedNodeBond.start` creates nothing and the node says once that a
Nav2 lifecycle manager needs ``bond_timeout: 0.0`` to manage it.
"""
from __future__ import annotations

import enum
import threading
import time
import uuid

from rclpy.clock import Clock, ClockType
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

TOPIC = 'bond'
#: Default heartbeat period: ``bond_heartbeat_period`` of Nav2's servers [s].
HEARTBEAT_PERIOD_S = 0.1
#: The heartbeat timeout Nav2's servers announce (bondcpp's default) [s]; not enforced here.
HEARTBEAT_TIMEOUT_S = 4.0
#: bond/msg/Constants: no sister by then -> dead [s]; active=false repeated every
#: DEAD_PUBLISH_PERIOD_S while breaking, for at most DISCONNECT_TIMEOUT_S [s].
CONNECT_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 2.0
DEAD_PUBLISH_PERIOD_S = 0.05
PUBLISHER_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.VOLATILE)
SUBSCRIPTION_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)


class BondState(enum.Enum):
    """The states of an end of a bond (module docstring)."""
    WAITING_FOR_SISTER = 'waiting_for_sister'
    ALIVE = 'alive'
    AWAIT_SISTER_DEATH = 'await_sister_death'
    DEAD = 'dead'


def status_type():
    """``bond.msg.Status``, or None where the ``bond`` package is not installed."""
    try:
        from bond.msg import Status
    except ImportError:
        return None
    return Status


class ManagedNodeBond:
    """The bond of ``node`` to its lifecycle manager: :meth:`start` at each activation,
    :meth:`stop` at deactivation, shutdown and exit (idempotent). ``heartbeat_period`` in s;
    0 = no bond. Timers run on the node's executor with the steady clock (a bond is wall-clock
    even under ``use_sim_time``)."""

    def __init__(self, node, heartbeat_period: float = HEARTBEAT_PERIOD_S):
        self._node = node
        self._period = heartbeat_period
        self._clock = Clock(clock_type=ClockType.STEADY_TIME)
        self._lock = threading.Lock()
        self._said_missing = False
        self._state = None            # None: no bond (never started, or released)
        self._instance_id = ''
        self._pub = self._sub = self._status = None
        self._timers = {}             # 'heartbeat', 'connect' or 'break' -> rclpy Timer
        self._break_deadline = 0.0    # time.monotonic() when AWAIT_SISTER_DEATH gives up

    def start(self) -> None:
        """A fresh bond (new instance id); a bond still breaking is dropped."""
        if self._period <= 0:
            return
        self._status = status_type()
        if self._status is None:
            if not self._said_missing:
                self._said_missing = True
                self._node.get_logger().info(
                    'no bond to a lifecycle manager: the ROS package "bond" is not installed '
                    '(the PyPI ROS wheels lack it). A Nav2 lifecycle_manager managing this node '
                    'needs bond_timeout: 0.0 (docs/launch.md).')
            return
        with self._lock:
            self._release()
            self._instance_id = str(uuid.uuid4())
            self._state = BondState.WAITING_FOR_SISTER
            self._pub = self._node.create_publisher(self._status, TOPIC, PUBLISHER_QOS)
            self._sub = self._node.create_subscription(self._status, TOPIC, self._on_status,
                                                       SUBSCRIPTION_QOS)
            self._start_timer('heartbeat', self._period, self._heartbeat)
            self._start_timer('connect', CONNECT_TIMEOUT_S, self._connect_timeout)

    def stop(self) -> None:
        """Break the bond (``active=false``); the rest of the break runs on the executor."""
        with self._lock:
            if self._state is None or self._state is BondState.AWAIT_SISTER_DEATH:
                return
            if self._state is BondState.DEAD or not self._node.context.ok():
                self._release()   # dead already, or the context is shut down (a signal)
            elif self._state is BondState.WAITING_FOR_SISTER:
                self._publish(False)
                self._release()
            else:
                self._publish(False)
                self._state = BondState.AWAIT_SISTER_DEATH
                self._break_deadline = time.monotonic() + DISCONNECT_TIMEOUT_S
                self._halt_timers()
                self._start_timer('break', DEAD_PUBLISH_PERIOD_S, self._breaking)

    # ------------------------------------------------------------------ executor callbacks
    def _heartbeat(self) -> None:
        with self._lock:
            if self._state in (BondState.WAITING_FOR_SISTER, BondState.ALIVE):
                self._publish(True)

    def _connect_timeout(self) -> None:
        with self._lock:
            if self._state is BondState.WAITING_FOR_SISTER:
                self._node.get_logger().debug(
                    f'no lifecycle manager answered the bond within {CONNECT_TIMEOUT_S:.0f} s; '
                    f'heartbeats stopped')
                self._state = BondState.DEAD
                self._halt_timers()

    def _breaking(self) -> None:
        with self._lock:
            if self._state is not BondState.AWAIT_SISTER_DEATH:
                return
            if time.monotonic() >= self._break_deadline:
                self._release()
            else:
                self._publish(False)

    def _on_status(self, msg) -> None:
        if msg.id != self._node.get_name() or msg.instance_id == self._instance_id:
            return
        with self._lock:
            if self._state is BondState.AWAIT_SISTER_DEATH and not msg.active:
                self._release()                               # the break is complete
            elif self._state is BondState.WAITING_FOR_SISTER and msg.active:
                self._state = BondState.ALIVE
                self._halt_timers('connect')
                self._node.get_logger().info('bond to the lifecycle manager formed')
            elif self._state in (BondState.WAITING_FOR_SISTER, BondState.ALIVE) and \
                    not msg.active:
                self._publish(False)                          # acknowledge the sister's break
                self._state = BondState.DEAD
                self._halt_timers()
                self._node.get_logger().info('the lifecycle manager broke the bond')

    # ------------------------------------------------------------------ helpers (lock held)
    def _publish(self, active: bool) -> None:
        if not self._node.context.ok():
            return
        msg = self._status()
        msg.header.stamp = self._clock.now().to_msg()
        msg.id = self._node.get_name()
        msg.instance_id = self._instance_id
        msg.active = active
        msg.heartbeat_timeout = HEARTBEAT_TIMEOUT_S
        msg.heartbeat_period = float(self._period)
        self._pub.publish(msg)

    def _start_timer(self, name: str, period_s: float, callback) -> None:
        self._timers[name] = self._node.create_timer(period_s, callback, clock=self._clock)

    def _halt_timers(self, *names: str) -> None:
        """Destroy the timers ``names`` (all when none is given)."""
        for name in names or tuple(self._timers):
            self._node.destroy_timer(self._timers.pop(name))

    def _release(self) -> None:
        """No bond any more: timers and endpoints destroyed."""
        self._halt_timers()
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
            self._node.destroy_subscription(self._sub)
        self._pub = self._sub = self._state = None
