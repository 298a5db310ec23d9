"""rosbag2 input/output without rosbag2: ``rosbags`` for the container, rclpy for the messages.

rosbags' CDR is byte-identical to rclpy's serialisation, so messages cross between the two as
raw bytes: :func:`deserialize` turns a bag record into the rclpy message the node would have
received, and :func:`serialize` turns an rclpy message back into a bag record. The typestore
is only needed for what a bag stores next to the bytes (the message definition and its RIHS01
hash), which is why our own ``msg/*.msg`` files are registered in it.
"""
from __future__ import annotations

import importlib
import signal
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

#: Package that owns the custom messages (msg/*.msg at the repository root).
INTERFACES_PACKAGE = 'romav2_ros'

STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


class BagError(RuntimeError):
    """An input bag that cannot be read (missing, corrupt, truncated); ``str()`` is one line."""


def _msg_dirs() -> list[Path]:
    """Where our .msg files may be: the source tree, then the installed interfaces share."""
    dirs = [Path(__file__).resolve().parents[1] / 'msg',
            Path(sys.prefix) / 'share' / INTERFACES_PACKAGE / 'msg']
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory(INTERFACES_PACKAGE)) / 'msg')
    except Exception:  # noqa: BLE001 - no AMENT_PREFIX_PATH or package not indexed: skip it
        pass
    return dirs


def custom_message_types() -> dict:
    """Field definitions of ``romav2_ros/msg/*`` parsed from the first msg folder found."""
    for folder in _msg_dirs():
        files = sorted(folder.glob('*.msg'))
        if files:
            types: dict = {}
            for path in files:
                types.update(get_types_from_msg(path.read_text(),
                                                f'{INTERFACES_PACKAGE}/msg/{path.stem}'))
            return types
    raise FileNotFoundError(f'no {INTERFACES_PACKAGE} .msg files in any of '
                            f'{[str(d) for d in _msg_dirs()]}')


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The ROS 2 Jazzy typestore with our custom messages registered (shared, built once)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(custom_message_types())
    return store


def register_bag_types(store: Typestore, connections: list[Connection]) -> None:
    """Register types a bag knows but ``store`` does not, from the definitions the bag stores.

    Bags recorded on a robot can carry messages of packages we have never seen; their
    definitions travel inside the bag, so copying them (``--include-inputs``) still works.
    """
    for conn in connections:
        if conn.msgtype in store.types or not conn.msgdef or not conn.msgdef.data:
            continue
        if conn.msgdef.format == MessageDefinitionFormat.IDL:
            store.register(get_types_from_idl(conn.msgdef.data))
        else:
            store.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))


def message_class(msgtype: str) -> type:
    """The rclpy class of ``'pkg/msg/Name'`` (imported on first use)."""
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def msgtype_of(msg) -> str:
    """``'pkg/msg/Name'`` of an rclpy message instance."""
    package, kind = type(msg).__module__.split('.')[:2]
    return f'{package}/{kind}/{type(msg).__name__}'


def deserialize(raw: bytes | memoryview, msgtype: str):
    """A bag record as the rclpy message a subscriber would receive."""
    from rclpy.serialization import deserialize_message
    return deserialize_message(bytes(raw), message_class(msgtype))


def serialize(msg) -> bytes:
    """An rclpy message as the CDR bytes a bag stores."""
    from rclpy.serialization import serialize_message
    return serialize_message(msg)


@contextmanager
def open_reader(path: str | Path) -> Iterator[Reader]:
    """A rosbags Reader whose opening failures are :class:`BagError`; closed on exit."""
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    if path.is_file():
        raise BagError(f'{path} is a file: give the rosbag2 folder (with metadata.yaml)')
    if not (path / 'metadata.yaml').is_file():
        raise BagError(f'{path} is not a rosbag2 folder: it has no metadata.yaml')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags, apsw, yaml and OS errors alike
        raise BagError(f'cannot open bag {path}: {one_line(exc)}') from exc
    try:
        yield reader
    finally:
        reader.close()


def read_messages(reader: Reader, connections: list[Connection], start: int | None = None,
                  stop: int | None = None) -> Iterator[tuple]:
    """``(connection, log_time_ns, raw)`` in log-time order; storage failures are BagError.

    Only the storage calls are guarded, so errors raised by the consumer of this generator
    (our own bugs) keep their traceback. A bag that yields fewer messages than its metadata
    announces is reported too: a damaged MCAP chunk can otherwise end the stream silently
    (checked when the whole bag is read, not a log-time range ``[start, stop)``).
    """
    expected = sum(c.msgcount for c in connections) if start is None and stop is None else 0
    it = reader.messages(connections=connections, start=start, stop=stop)
    count = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - any storage-layer failure mid-file
            raise BagError(f'bag {reader.path} is corrupt after {count} messages: '
                           f'{one_line(exc)}') from exc
        count += 1
        yield item
    if count < expected:
        raise BagError(f'bag {reader.path} is truncated or corrupt: read {count} of the '
                       f'{expected} messages its metadata lists')


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, for errors shown to a user instead of a traceback."""
    text = ' '.join(str(exc).split())
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (they are delivered right after it).

    For steps that must not be cut in half by Ctrl-C: a frame's outputs, a bag's closing.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class BagWriter:
    """A rosbag2 writer that adds a connection on a topic's first message and always closes.

    Closing writes the MCAP footer / sqlite3 metadata, without which the bag is unreadable;
    ``close()`` therefore runs with signals deferred, so a second Ctrl-C during the final
    flush cannot leave a half-written bag.
    """

    def __init__(self, path: str | Path, storage: str = 'mcap',
                 store: Typestore | None = None):
        if storage not in STORAGE_PLUGINS:
            raise ValueError(f'storage {storage!r}: one of {sorted(STORAGE_PLUGINS)}')
        self.path = Path(path)
        self.store = store or typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGE_PLUGINS[storage])
        self._connections: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}
        self._writer.open()

    def write_raw(self, topic: str, msgtype: str, log_time_ns: int, raw: bytes | memoryview,
                  source: Connection | None = None) -> None:
        """Append CDR bytes; ``source`` (a reader's connection) keeps its definition and QoS."""
        conn = self._connections.get(topic)
        if conn is None:
            kwargs = {'typestore': self.store}
            if source is not None and source.msgdef and source.msgdef.data and \
                    source.msgdef.format == MessageDefinitionFormat.MSG:
                kwargs = {'msgdef': source.msgdef.data, 'rihs01': source.digest}
            if source is not None and source.ext is not None:
                kwargs['offered_qos_profiles'] = source.ext.offered_qos_profiles
            conn = self._writer.add_connection(topic, msgtype, **kwargs)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f'topic {topic}: {msgtype} after {conn.msgtype}')
        self._writer.write(conn, log_time_ns, raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msg, log_time_ns: int) -> None:
        """Append an rclpy message."""
        self.write_raw(topic, msgtype_of(msg), log_time_ns, serialize(msg))

    def close(self) -> None:
        if self._writer is None:
            return
        with signals_deferred():
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
