"""Time synchronisation of several topics: the ROS 2 ``message_filters`` Python API.

When ``message_filters`` imports (a ROS install) its classes are re-exported unchanged;
otherwise this module provides the same API (the PyPI ROS wheels do not ship it):

    left = Subscriber(node, Image, 'left/image_rect', qos_profile=qos_profile_sensor_data)
    sync = ApproximateTimeSynchronizer([left, right], queue_size=10, slop=0.05)
    sync.registerCallback(callback)          # callback(left_msg, right_msg)

Semantics follow message_filters: ``ExactTimeSynchronizer`` (called ``TimeSynchronizer``
there) fires when every input has a message with the same ``header.stamp``;
``ApproximateTimeSynchronizer`` fires on the first set whose stamps all lie within ``slop``
seconds of each other. Each input keeps at most ``queue_size`` pending messages (the oldest
is dropped). Matched messages, and every older pending message, are removed.
"""
from __future__ import annotations

import itertools
import threading

try:  # pragma: no cover - only on a ROS install
    from message_filters import (ApproximateTimeSynchronizer, SimpleFilter,  # noqa: F401
                                 Subscriber, TimeSynchronizer as ExactTimeSynchronizer)
except ImportError:

    def _stamp_ns(msg) -> int:
        stamp = msg.header.stamp
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)

    class SimpleFilter:
        """A message source: ``registerCallback(cb, *args)``, ``signalMessage(*msgs)``."""

        def __init__(self):
            self.callbacks = {}

        def registerCallback(self, cb, *args):  # noqa: N802 (message_filters API)
            conn = len(self.callbacks)
            self.callbacks[conn] = (cb, args)
            return conn

        def signalMessage(self, *msg):  # noqa: N802
            for cb, args in list(self.callbacks.values()):
                cb(*(msg + args))

    class Subscriber(SimpleFilter):
        """A subscription as a filter source (``qos_profile`` defaults to 10, like upstream:
        pass ``qos_profile_sensor_data`` for best-effort cameras)."""

        def __init__(self, node, msg_type, topic, qos_profile=10, **kwargs):
            super().__init__()
            self.node, self.topic = node, topic
            self.sub = node.create_subscription(msg_type, topic, self.signalMessage,
                                                qos_profile, **kwargs)

        def getTopic(self):  # noqa: N802
            return self.topic

    class ExactTimeSynchronizer(SimpleFilter):
        """Fires with one message per input once all inputs have the same stamp."""

        def __init__(self, fs, queue_size):
            super().__init__()
            self.queue_size = int(queue_size)
            self.queues = [{} for _ in fs]
            self.lock = threading.Lock()
            for i, f in enumerate(fs):
                f.registerCallback(self.add, self.queues[i])

        def _enqueue(self, msg, queue) -> int:
            """Store ``msg`` by stamp, dropping the oldest beyond ``queue_size`` (lock held)."""
            stamp = _stamp_ns(msg)
            queue[stamp] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
            return stamp

        def add(self, msg, queue):
            with self.lock:
                stamp = self._enqueue(msg, queue)
                if not all(stamp in q for q in self.queues):
                    return
                msgs = [q[stamp] for q in self.queues]
                for q in self.queues:
                    for s in [s for s in q if s <= stamp]:
                        del q[s]
            self.signalMessage(*msgs)

    class ApproximateTimeSynchronizer(ExactTimeSynchronizer):
        """Fires on the first set of messages whose stamps lie within ``slop`` seconds."""

        def __init__(self, fs, queue_size, slop, allow_headerless=False):
            if allow_headerless:
                raise NotImplementedError('allow_headerless is not supported')
            super().__init__(fs, queue_size)
            self.slop_ns = int(round(float(slop) * 1e9))

        def add(self, msg, queue):
            with self.lock:
                stamp = self._enqueue(msg, queue)
                if stamp not in queue:  # older than a full queue: dropped at once
                    return
                # For each other input, its stamps within slop of the new one, nearest first.
                candidates = []
                for q in self.queues:
                    if q is queue:
                        candidates.append([stamp])
                        continue
                    near = sorted((s for s in q if abs(s - stamp) <= self.slop_ns),
                                  key=lambda s: abs(s - stamp))
                    if not near:
                        return
                    candidates.append(near)
                for combo in itertools.product(*candidates):
                    if max(combo) - min(combo) <= self.slop_ns:
                        break
                else:
                    return
                msgs = [q[s] for q, s in zip(self.queues, combo)]
                for q, s in zip(self.queues, combo):
                    for old in [o for o in q if o <= s]:
                        del q[old]
            self.signalMessage(*msgs)
