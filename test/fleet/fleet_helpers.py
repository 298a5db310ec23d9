"""Helpers of the romav2-batch tests: bag sets, reference replays, decoded bag contents."""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

import replay_doubles as doubles
from romav2_ros import bag_io, replay

#: The installed console script (pip install -e . puts it beside the interpreter).
BATCH = Path(sys.executable).parent / 'romav2-batch'
ORACLE = ['-p', 'model_source:=replay_doubles:oracle']
SLOW_ORACLE = ['-p', 'model_source:=replay_doubles:slow_oracle']


def truncate_storage(bag: Path) -> None:
    """Cut the bag's storage file in half (as test_replay_failures does): unreadable."""
    path = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def make_fleet(root: Path, pairs=(3, 5, 4), corrupt: bool = True) -> list[Path]:
    """Stereo bags ``bag_<i>`` of ``pairs`` pairs under ``root``; with ``corrupt`` a last one
    whose storage is truncated."""
    bags = []
    for i, n in enumerate(pairs):
        bags.append(root / f'bag_{i}')
        doubles.write_stereo_bag(bags[-1], pairs=n)
    if corrupt:
        bags.append(root / 'bag_corrupt')
        doubles.write_stereo_bag(bags[-1], pairs=3)
        truncate_storage(bags[-1])
    return bags


def reference(bag: Path, out: Path, options: list[str]) -> Path:
    """``romav2-replay`` of ``bag`` into ``out`` (in process), the expected output."""
    assert replay.main([str(bag), str(out), *options]) == 0
    return out


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


def summary(out: Path) -> dict:
    return json.loads((out / 'summary.json').read_text())


def rows(out: Path) -> dict[str, dict]:
    return {row['name']: row for row in summary(out)['bags']}


def tree_state(folder: Path) -> dict:
    """Every file under ``folder``: (inode, mtime_ns, size), to show nothing was rewritten."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob('*')) if p.is_file()}


def wait_for_head(address: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until a driver can connect to the head at ``address`` (``ray status`` succeeds)."""
    deadline = time.monotonic() + timeout_s
    ray_cli = str(Path(sys.executable).parent / 'ray')
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'ray start --head exited with status {proc.returncode}')
        status = subprocess.run([ray_cli, 'status', '--address', address],
                                capture_output=True, text=True, timeout=60)
        if status.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f'the Ray head at {address} did not come up in {timeout_s} s')


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
