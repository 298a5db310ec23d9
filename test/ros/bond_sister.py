"""The lifecycle manager's end of a bond, written for the tests from the protocol (bondcpp's,
as Nav2's ``lifecycle_manager`` configures it), independent of ``romav2_ros.bond``.

Run as a process (it needs the ``bond`` message package; the PyPI wheels lack it, so the tests
start it with the package they built): ``python bond_sister.py BOND_ID BOND_TIMEOUT_S``.
Commands on stdin, one a line; events on stdout, one JSON object a line; times are
``time.monotonic()`` (CLOCK_MONOTONIC, the same in every process of the machine):

``bond``     what the manager does right after it activated the node: a new end (random
             instance id) on ``bond``, ``active=true`` every 0.1 s; formed when the first Status
             of the bond from another end arrives (either ``active``). Event ``formed`` (with
             that message's fields and ``after_s``), or ``not_formed`` after
             ``BOND_TIMEOUT_S / 2`` (the manager's wait). Then, once: ``broken`` with reason
             ``sister_dead`` (the node sent ``active=false``; acknowledged with
             ``active=false``) or ``heartbeat_timeout`` (no ``active=true`` for
             ``BOND_TIMEOUT_S``).
``unbond``   what the manager does after deactivating the node or when it shuts down: its
             end breaks (``active=false`` unless already dead), waits 0.1 s for the node's
             answer (bondcpp's destructor) and is destroyed. Event ``unbonded``, with
             ``broke_at``, the time it sent ``active=false``.
``observed`` event ``observed``: per instance id of the node's ends, what arrived so far
             (counts of ``active`` true/false, times of the first and last of each, largest
             gap between heartbeats, announced period and timeout).
``quit``     exit.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import uuid

import rclpy
from bond.msg import Status
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

#: bondcpp's QoS: publisher keep last 5, subscription keep last 100; reliable, volatile.
PUB_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
SUB_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
#: Nav2's lifecycle_manager sets its ends' heartbeat period to 0.1 s.
MANAGER_HEARTBEAT_PERIOD_S = 0.1


def emit(event: str, **fields) -> None:
    print(json.dumps({'event': event, 't': time.monotonic(), **fields}), flush=True)


class ManagerEnd:
    """One end of the manager: WAITING -> ALIVE (or DEAD) -> DEAD."""

    def __init__(self, node, bond_id: str, timeout_s: float):
        self.node, self.bond_id, self.timeout_s = node, bond_id, timeout_s
        self.instance_id = str(uuid.uuid4())
        self.state = 'waiting'
        self.started = self.last_heard = time.monotonic()
        self.next_beat = self.started
        self.pub = node.create_publisher(Status, 'bond', PUB_QOS)
        self.sub = node.create_subscription(Status, 'bond', self.on_status, SUB_QOS)

    def send(self, active: bool) -> None:
        msg = Status(id=self.bond_id, instance_id=self.instance_id, active=active,
                     heartbeat_timeout=self.timeout_s,
                     heartbeat_period=MANAGER_HEARTBEAT_PERIOD_S)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)

    def on_status(self, msg) -> None:
        if msg.id != self.bond_id or msg.instance_id == self.instance_id:
            return
        now = time.monotonic()
        if self.state == 'waiting':
            emit('formed', after_s=now - self.started, id=msg.id, instance_id=msg.instance_id,
                 active=msg.active, heartbeat_period=msg.heartbeat_period,
                 heartbeat_timeout=msg.heartbeat_timeout)
            self.state = 'alive'
        if self.state == 'alive':
            if msg.active:
                self.last_heard = now
            else:
                self.state = 'dead'
                self.send(False)     # the sister died first: acknowledge
                emit('broken', reason='sister_dead', after_s=now - self.started)

    def tick(self) -> None:
        now = time.monotonic()
        if self.state == 'waiting' and now - self.started > self.timeout_s / 2:
            self.state = 'dead'
            emit('not_formed', after_s=now - self.started)
        elif self.state == 'alive' and now - self.last_heard > self.timeout_s:
            self.state = 'dead'
            emit('broken', reason='heartbeat_timeout', after_s=now - self.started,
                 silent_s=now - self.last_heard)
        if self.state in ('waiting', 'alive') and now >= self.next_beat:
            self.send(True)
            self.next_beat = now + MANAGER_HEARTBEAT_PERIOD_S

    def destroy(self) -> float:
        """Break (unless dead already) and destroy; the time the break was sent."""
        broke_at = time.monotonic()
        if self.state != 'dead':
            self.state = 'dead'
            self.send(False)
            while time.monotonic() < broke_at + 0.1:
                rclpy.spin_once(self.node, timeout_sec=0.01)
        self.node.destroy_publisher(self.pub)
        self.node.destroy_subscription(self.sub)
        return broke_at


class Observer:
    """Every Status of the bond from the node's ends (not the manager's), per instance id."""

    def __init__(self, node, bond_id: str, own: set):
        self.bond_id, self.own, self.seen = bond_id, own, {}
        node.create_subscription(Status, 'bond', self.on_status, SUB_QOS)

    def on_status(self, msg) -> None:
        if msg.id != self.bond_id or msg.instance_id in self.own:
            return
        now = time.monotonic()
        s = self.seen.setdefault(msg.instance_id, {
            'true': 0, 'false': 0, 'first_true': None, 'last_true': None, 'first_false': None,
            'last_false': None, 'max_gap_s': 0.0, 'heartbeat_period': msg.heartbeat_period,
            'heartbeat_timeout': msg.heartbeat_timeout})
        key = 'true' if msg.active else 'false'
        if msg.active and s['last_true'] is not None:
            s['max_gap_s'] = max(s['max_gap_s'], now - s['last_true'])
        s[key] += 1
        s['first_' + key] = s['first_' + key] or now
        s['last_' + key] = now


def read_commands(commands: queue.Queue) -> None:
    for line in sys.stdin:
        commands.put(line.strip())


def main() -> int:
    bond_id, timeout_s = sys.argv[1], float(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node('bond_sister')
    own = set()
    observer = Observer(node, bond_id, own)
    commands = queue.Queue()
    threading.Thread(target=read_commands, args=(commands,), daemon=True).start()
    end = None
    emit('ready')
    while True:
        rclpy.spin_once(node, timeout_sec=0.01)
        if end is not None:
            end.tick()
        try:
            command = commands.get_nowait()
        except queue.Empty:
            continue
        if command == 'bond':
            end = ManagerEnd(node, bond_id, timeout_s)
            own.add(end.instance_id)
        elif command == 'unbond':
            broke_at = end.destroy()
            end = None
            emit('unbonded', broke_at=broke_at)
        elif command == 'observed':
            emit('observed', seen=observer.seen)
        elif command == 'quit':
            break
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
