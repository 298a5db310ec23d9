"""``romav2-play``: publish a rosbag2's messages live, with their recorded timing (``ros2 bag play``
stand-in for machines without rosbag2).

Messages go out as the raw CDR bytes stored in the bag (rclpy publishes serialised bytes
as-is), spaced by their recorded log times divided by ``--rate``. ``/clock``
(rosgraph_msgs/Clock) carries the bag's time, so nodes started with ``use_sim_time:=true`` see
the recorded clock, like ``ros2 bag play --clock``. Topic names can be remapped with the usual
``--ros-args -r /bag/topic:=/new/topic``.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time

from romav2_ros import bag_io

CLOCK_TOPIC = '/clock'


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='romav2-play',
        description='Publish a rosbag2\'s messages with their recorded timing, and /clock '
                    '(a stand-in for ros2 bag play --clock).',
        epilog='Arguments after --ros-args are passed to rclpy (e.g. -r old:=new remaps).')
    parser.add_argument('bag', help='rosbag2 folder (mcap or sqlite3)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (default 1.0; 2 = twice as fast)')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='play only these topics (default: all)')
    parser.add_argument('--loop', action='store_true', help='start again at the end')
    parser.add_argument('--no-clock', dest='clock', action='store_false',
                        help='do not publish /clock')
    parser.add_argument('--clock-hz', type=float, default=100.0,
                        help='/clock publication rate between messages (default 100)')
    parser.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable',
                        help='reliability of the publishers (default reliable: no loss of '
                             'large images; best_effort matches sensor-data publishers)')
    parser.add_argument('--depth', type=int, default=10, help='publisher history depth')
    parser.add_argument('--wait-for-subscribers', type=float, default=5.0, metavar='SECONDS',
                        help='wait at most this long until every topic has a subscriber '
                             '(0: start at once; default 5)')
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.clock_hz <= 0:
        parser.error('--rate and --clock-hz must be positive')
    return args


def _stamp(ns: int):
    from builtin_interfaces.msg import Time
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class Player:
    """Publishers for a bag's connections plus /clock, and the timed publication loop."""

    def __init__(self, node, connections, qos, publish_clock: bool, clock_hz: float):
        from rosgraph_msgs.msg import Clock
        self.node = node
        self.publishers = {}
        self.counts: dict[str, int] = {}
        for conn in connections:
            if conn.topic in self.publishers:
                continue
            try:
                cls = bag_io.message_class(conn.msgtype)
            except (ImportError, AttributeError):
                node.get_logger().warning(f'skipping {conn.topic}: no Python class for '
                                          f'{conn.msgtype} in this environment')
                continue
            self.publishers[conn.topic] = node.create_publisher(cls, conn.topic, qos)
            self.counts[conn.topic] = 0
        self.clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, qos) if publish_clock \
            else None
        self.clock_period = 1.0 / clock_hz

    def wait_for_subscribers(self, timeout_s: float) -> list[str]:
        """Wait (bounded) until every topic has a subscriber; returns those still without."""
        import rclpy
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [t for t, p in self.publishers.items() if p.get_subscription_count() == 0]
            if not missing or time.monotonic() >= deadline:
                return missing
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def publish_clock(self, bag_ns: int) -> None:
        if self.clock_pub is not None:
            from rosgraph_msgs.msg import Clock
            self.clock_pub.publish(Clock(clock=_stamp(bag_ns)))

    def flush(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) until reliable subscribers have acknowledged everything: exiting
        right after the last publish would otherwise lose the tail of the bag."""
        from rclpy.duration import Duration
        deadline = time.monotonic() + timeout_s
        for publisher in [*self.publishers.values(), self.clock_pub]:
            if publisher is not None:
                remaining = max(deadline - time.monotonic(), 0.0)
                publisher.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9)))

    def play_once(self, reader, connections, rate: float) -> None:
        """One pass over the bag: sleep until each message's time, ticking /clock meanwhile."""
        wall0, bag0 = time.monotonic(), None
        for conn, log_ns, raw in bag_io.read_messages(reader, connections):
            publisher = self.publishers.get(conn.topic)
            if publisher is None:
                continue
            bag0 = log_ns if bag0 is None else bag0
            due = wall0 + (log_ns - bag0) / 1e9 / rate
            while (wait := due - time.monotonic()) > 0:
                time.sleep(min(wait, self.clock_period))
                elapsed_ns = int((time.monotonic() - wall0) * rate * 1e9)
                self.publish_clock(min(bag0 + elapsed_ns, log_ns))
            # The clock reaches the message's time first, so a sim-time subscriber never
            # receives a message stamped in its future.
            self.publish_clock(log_ns)
            publisher.publish(bytes(raw))
            self.counts[conn.topic] += 1


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions

    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    args = parse_args(argv[:len(argv) - len(ros_args)])
    # Both signals end playback the same way: the bag reader and the node are closed cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rclpy.init(args=['romav2-play', *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('romav2_player')
    qos = QoSProfile(depth=args.depth, reliability=ReliabilityPolicy.RELIABLE
                     if args.qos == 'reliable' else ReliabilityPolicy.BEST_EFFORT)
    started = time.monotonic()
    player = None
    try:
        with bag_io.open_reader(args.bag) as reader:
            connections = [c for c in reader.connections
                           if args.topics is None or c.topic in args.topics]
            if not connections:
                raise bag_io.BagError(f'bag {args.bag} has none of the topics {args.topics}')
            player = Player(node, connections, qos, args.clock, args.clock_hz)
            if reader.message_count:  # sim-time nodes get a time before the first message
                player.publish_clock(reader.start_time)
            missing = player.wait_for_subscribers(args.wait_for_subscribers)
            if missing:
                node.get_logger().warning(f'no subscriber yet on {missing}; playing anyway')
            while True:
                player.play_once(reader, connections, args.rate)
                if not args.loop:
                    break
            player.flush()
        status = 0
    except bag_io.BagError as exc:
        print(f'romav2-play: error: {exc}', file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if player is not None:
        total = sum(player.counts.values())
        print(f'romav2-play: published {total} messages on {len(player.counts)} topics in '
              f'{time.monotonic() - started:.1f} s' + (' (interrupted)' if status == 130 else ''),
              file=sys.stderr)
    return status


if __name__ == '__main__':
    sys.exit(main())
