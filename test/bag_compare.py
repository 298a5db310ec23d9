"""Two bags' contents compared as decoded messages, bit for bit (not as CDR bytes: rclpy
leaves CDR padding bytes uninitialised, see test/test_foundation.py)."""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from romav2_ros import bag_io


def _plain(value):
    """A decoded message as nested tuples that compare bit for bit (NaN equals NaN)."""
    if dataclasses.is_dataclass(value):
        return (type(value).__name__,
                tuple((f.name, _plain(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return struct.pack('<d', value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def decoded(bag: Path) -> list[tuple]:
    """``(topic, msgtype, log_ns, content)`` of every message, decoded with a typestore that
    knows only what the bag stores: content, not bytes (rclpy leaves CDR padding bytes
    uninitialised, see test/test_foundation.py)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    with Reader(bag) as reader:
        bag_io.register_bag_types(store, reader.connections)
        return [(c.topic, c.msgtype, log_ns, _plain(store.deserialize_cdr(raw, c.msgtype)))
                for c, log_ns, raw in reader.messages()]


def assert_same_bag(got: Path, expected: Path) -> int:
    """The two bags hold the same messages (topic, type, log time, content) in the same
    order; returns how many."""
    a, b = decoded(got), decoded(expected)
    assert [m[:3] for m in a] == [m[:3] for m in b]
    for x, y in zip(a, b):
        assert x == y, f'{x[0]} at {x[2]} differs'
    return len(a)
