"""Helpers of the romav2-batch tests: bag sets, reference replays (bag contents compared by
test/bag_compare.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import replay_doubles as doubles
from romav2_ros import replay

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
