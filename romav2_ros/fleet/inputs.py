"""The bags of a fleet run: finding them, naming their outputs, fingerprinting their content.

A bag is a rosbag2 folder (a ``metadata.yaml`` beside its storage files). An input on the
command line is a bag, a folder searched recursively for bags, or a glob of either. A bag
found inside a folder keeps its path relative to that folder as its output name (so two
robots' ``run_01`` stay apart); a bag named directly keeps its folder name.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from pathlib import Path

import yaml

METADATA = 'metadata.yaml'
#: Bytes read from each end of every storage file for the content fingerprint.
EDGE_BYTES = 64 * 1024


class InputsError(ValueError):
    """The command line's inputs cannot be resolved (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class BagInput:
    """One input bag: its folder (absolute) and its output's path relative to ``--out``."""

    path: Path
    name: str


def _is_bag(path: Path) -> bool:
    return (path / METADATA).is_file()


def _bags_under(folder: Path, skip: Path) -> list[Path]:
    """Bag folders below ``folder`` (not descending into a bag, nor into ``skip``)."""
    found = []
    for root, dirs, _ in os.walk(folder):
        here = Path(root)
        if here == skip:
            dirs[:] = []
            continue
        if _is_bag(here):
            found.append(here)
            dirs[:] = []
        else:
            dirs.sort()
    return found


def find_bags(inputs: list[str], out_dir: Path) -> list[BagInput]:
    """The bags named by ``inputs`` in command-line order, each once; nothing under
    ``out_dir`` (a rerun must not take its own outputs for inputs).

    A path that is neither a bag nor a folder holding bags is kept as an input of its own
    (named after it), so that the worker reports why it cannot be read, like any bad bag.
    """
    out_dir = out_dir.resolve()
    bags: dict[Path, str] = {}
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise InputsError(f'{item}: no such file or folder')
        for match in matches:
            path = Path(match).resolve()
            if not path.exists():
                raise InputsError(f'{match}: no such file or folder')
            if path == out_dir or out_dir in path.parents:
                continue
            if path.is_dir() and not _is_bag(path):
                found = _bags_under(path, out_dir)
                if not found:
                    raise InputsError(f'{match}: no rosbag2 folder (with {METADATA}) in it')
                for bag in found:
                    bags.setdefault(bag, bag.relative_to(path).as_posix())
            else:
                bags.setdefault(path, path.name)
    by_name: dict[str, list[Path]] = {}
    for path, name in bags.items():
        by_name.setdefault(name, []).append(path)
    clashes = {n: p for n, p in by_name.items() if len(p) > 1}
    if clashes:
        name, paths = next(iter(clashes.items()))
        raise InputsError(f'{len(clashes)} output name(s) would be written twice, e.g. {name!r} '
                          f'from {", ".join(map(str, paths))}: give their parent folder instead '
                          f'(outputs keep the path below it)')
    return [BagInput(path, name) for path, name in bags.items()]


def fingerprint(path: Path) -> dict:
    """Size, newest mtime and a content hash of a bag folder (or a file).

    The hash covers ``metadata.yaml`` in full and, for every other file, its name, size and
    first and last 64 KiB: the MCAP header and summary (index, statistics, CRCs) and the
    sqlite3 header live there, and the metadata lists every file's message count and time
    range. Hashing whole files would read a fleet's terabytes again on every rerun, which
    is then no longer the seconds it should be; a rewrite that keeps a file's size, both
    ends and the mtime is not something a recorder does.
    """
    files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    size, mtime = 0, path.stat().st_mtime_ns
    for file in files:
        stat = file.stat()
        size += stat.st_size
        mtime = max(mtime, stat.st_mtime_ns)
        digest.update(f'{file.relative_to(path) if file != path else file.name}\0'
                      f'{stat.st_size}\0'.encode())
        with open(file, 'rb') as f:
            if file.name == METADATA or stat.st_size <= 2 * EDGE_BYTES:
                digest.update(f.read())
            else:
                digest.update(f.read(EDGE_BYTES))
                f.seek(-EDGE_BYTES, os.SEEK_END)
                digest.update(f.read(EDGE_BYTES))
    return {'size': size, 'mtime_ns': mtime, 'sha256': digest.hexdigest()}


@dataclasses.dataclass
class BagMetadata:
    """What ``metadata.yaml`` says about a bag: time range (ns) and topics."""

    start_ns: int
    duration_ns: int
    #: ``(topic, msgtype, message_count)`` per topic.
    topics: list[tuple[str, str, int]]

    @classmethod
    def read(cls, bag: Path) -> 'BagMetadata | None':
        """None when the file is missing or not the rosbag2 layout (the worker says why)."""
        try:
            info = yaml.safe_load((bag / METADATA).read_text())['rosbag2_bagfile_information']
            return cls(int(info['starting_time']['nanoseconds_since_epoch']),
                       int(info['duration']['nanoseconds']),
                       [(t['topic_metadata']['name'], t['topic_metadata']['type'],
                         int(t['message_count'])) for t in info['topics_with_message_count']])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            return None

    def expected_sets(self, mode: str, topics: list[str] | None, transport: str) -> int | None:
        """Synchronised sets the replay will expect (as it counts them), None if unknown."""
        from types import SimpleNamespace

        from romav2_ros import replay
        connections = [SimpleNamespace(topic=t, msgtype=m, msgcount=n) for t, m, n in self.topics]
        try:
            roles = replay.select_topics(connections, mode, topics, transport)
        except replay.ReplayError:
            return None
        counts = {t: n for t, _, n in self.topics}
        return min(counts[topic] for topic in roles.values())
