"""Time synchronisation of several topics, with the ROS 2 ``message_filters`` Python API.

The package always uses these classes, also on a ROS install where ``message_filters``
imports, so the synchroniser that runs is the tested one:

    left = Subscriber(node, Image, 'left/image_rect', qos_profile=qos_profile_sensor_data)
    sync = ApproximateTimeSynchronizer([left, right], queue_size=10, slop=0.05)
    sync.registerCallback(callback)          # callback(left_msg, right_msg)
    sync.registerDropCallback(on_drop)       # on_drop(reason, msg): 'late' (see below)

Semantics follow message_filters: ``ExactTimeSynchronizer`` (``TimeSynchronizer`` there) fires
when every input has a message with the same ``header.stamp``; ``ApproximateTimeSynchronizer``
fires on the first set whose stamps all lie within ``slop`` seconds of each other. Each input
keeps at most ``queue_size`` pending messages (the oldest is dropped). Matched messages, and
every older pending message, are removed.

One difference, on purpose: a message not newer than the last message its input contributed
to a set is **late** and dropped at once (message_filters keeps it pending, so a late set can
complete after a newer one and reach a sequence out of order, which restarts the sequence).
Each late set is reported once to the drop callbacks (the messages of one late set share a
stamp, or lie within ``slop`` of each other). With ``max_stamp_jump`` (s), a message older
than that is not late but a jump back in time (a looped bag, a clock reset): the synchroniser
starts over from it.
"""
from __future__ import annotations

import itertools
import threading
from collections import deque

from romav2_ros.messages import stamp_ns


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

    #: Stamp tolerance within which late messages count as one late set (exact: equal).
    _late_group_ns = 0

    def __init__(self, fs, queue_size, max_stamp_jump=None):
        super().__init__()
        self.queue_size = int(queue_size)
        self.max_stamp_jump = max_stamp_jump
        self.queues = [{} for _ in fs]
        self.emitted = [None for _ in fs]      # per input: stamp of its last matched message
        self.lock = threading.Lock()
        self.drop_callbacks = []
        self._late = deque(maxlen=4 * len(fs) * max(self.queue_size, 1))
        for i, f in enumerate(fs):
            f.registerCallback(self.add, i)

    @property
    def max_stamp_jump(self):
        """Seconds back in time beyond which a message starts the synchroniser over (None:
        never); settable at runtime (the node's runtime parameter of the same name)."""
        return None if self.jump_ns is None else self.jump_ns * 1e-9

    @max_stamp_jump.setter
    def max_stamp_jump(self, seconds) -> None:
        self.jump_ns = None if seconds is None else int(float(seconds) * 1e9)

    def registerDropCallback(self, cb):  # noqa: N802 (in the style of registerCallback)
        """``cb(reason, msg)`` for every dropped set (reason ``'late'``)."""
        self.drop_callbacks.append(cb)

    def _accept(self, msg, i) -> tuple:
        """``(stamp, report)``: the stamp of ``msg`` stored in queue ``i``, or None when it is
        late; ``report`` True for the first late message of a late set (lock held)."""
        stamp = stamp_ns(msg.header.stamp)
        last = self.emitted[i]
        if last is not None and self.jump_ns is not None and last - stamp > self.jump_ns:
            for q in self.queues:      # back in time: start over
                q.clear()
            self.emitted = [None] * len(self.queues)
            last = None
        if last is not None and stamp <= last:
            report = not any(abs(stamp - s) <= self._late_group_ns for s in self._late)
            if report:
                self._late.append(stamp)
            return None, report
        queue = self.queues[i]
        queue[stamp] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
        return (stamp if stamp in queue else None), False

    def _find_set(self, i: int, stamp: int):
        """Stamps (one per input) of a complete set containing the new one, or None."""
        if all(stamp in q for q in self.queues):
            return [stamp] * len(self.queues)
        return None

    def _emit(self, stamps) -> list:
        """Take the messages at ``stamps`` (one per input) and everything older (lock held)."""
        msgs = [q[s] for q, s in zip(self.queues, stamps)]
        for i, (q, s) in enumerate(zip(self.queues, stamps)):
            for old in [o for o in q if o <= s]:
                del q[old]
            self.emitted[i] = s
        return msgs

    def add(self, msg, i):
        msgs = None
        with self.lock:
            stamp, late = self._accept(msg, i)
            if stamp is not None:
                stamps = self._find_set(i, stamp)
                if stamps is not None:
                    msgs = self._emit(stamps)
        if late:
            for cb in list(self.drop_callbacks):
                cb('late', msg)
        if msgs is not None:
            self.signalMessage(*msgs)


class ApproximateTimeSynchronizer(ExactTimeSynchronizer):
    """Fires on the first set of messages whose stamps lie within ``slop`` seconds."""

    def __init__(self, fs, queue_size, slop, allow_headerless=False, max_stamp_jump=None):
        if allow_headerless:
            raise NotImplementedError('allow_headerless is not supported')
        super().__init__(fs, queue_size, max_stamp_jump)
        self.slop_ns = int(round(float(slop) * 1e9))
        self._late_group_ns = self.slop_ns

    def _find_set(self, i: int, stamp: int):
        """Stamps (one per input) of a set within slop that contains the new one, or None."""
        candidates = []
        for j, q in enumerate(self.queues):
            if j == i:
                candidates.append([stamp])
                continue
            # its stamps within slop of the new one, nearest first
            near = sorted((s for s in q if abs(s - stamp) <= self.slop_ns),
                          key=lambda s: abs(s - stamp))
            if not near:
                return None
            candidates.append(near)
        for combo in itertools.product(*candidates):
            if max(combo) - min(combo) <= self.slop_ns:
                return combo
        return None


def from_parameters(sources, values: dict) -> ExactTimeSynchronizer:
    """The synchroniser the node's parameters describe (``approximate_sync``,
    ``sync_queue_size``, ``sync_slop``, ``max_stamp_jump``): the one place both the node and
    the bag replay build theirs."""
    if values['approximate_sync']:
        return ApproximateTimeSynchronizer(sources, values['sync_queue_size'],
                                           values['sync_slop'],
                                           max_stamp_jump=values['max_stamp_jump'])
    return ExactTimeSynchronizer(sources, values['sync_queue_size'],
                                 max_stamp_jump=values['max_stamp_jump'])
