"""Time chunks: a long bag split into windows processed in parallel, then concatenated.

Chunk ``k`` of a bag starting at ``t0`` outputs the sets completed by a message logged in
``[t0 + k S, t0 + (k+1) S)`` (``S`` = ``--chunk-seconds``; the first chunk starts at the
bag's start, the last runs to its end). How chunks overlap: each chunk but the first also
reads the ``max_stamp_jump + sync_slop + 1 s`` of messages before its window, synchronises
them, and runs the last set found there through the pipeline without writing anything
(:class:`~romav2_ros.replay.TimeWindow`). Its first set then has the previous frame
(sequential) and the previous stamp (both modes' order and jump checks) that the whole-bag
replay gives it: a previous frame further back than ``max_stamp_jump`` restarts the sequence
in the whole-bag replay too, and the extra second covers recording latency between header
stamps and log times. The cost is one extra model pass per chunk.

Equal to the whole-bag replay as long as the set just before a boundary is not itself
dropped as bad input (then the state comes from an earlier set): the match sampler draws
from a generator seeded per pair (``random_seed`` and A's stamp), so sampled outputs (matches,
poses) do not depend on where a chunk starts; the per-bag counts are the sums over chunks.
Chunking is refused where it could change outputs:
* in modes whose state spans more than one previous frame (stereo_odometry: the odometry
  integrates the whole trajectory, so a chunk could not know its start pose);
* with ``--limit`` (a count of processed pairs, not a time range).
"""
from __future__ import annotations

import math
from pathlib import Path

from romav2_ros import bag_io, replay
from romav2_ros.fleet.inputs import BagMetadata

#: Modes whose pipeline state is at most the previous frame and stamp.
CHUNKABLE_MODES = ('stereo', 'sequential')
#: Sets run through the pipeline (without output) before a chunk's window.
LEAD_IN_SETS = 1
#: Margin of the look-back over ``max_stamp_jump`` + ``sync_slop`` (s).
LOOKBACK_MARGIN_S = 1.0


def refusal(replay_args) -> str | None:
    """Why ``replay_args`` cannot be chunked without changing outputs, or None."""
    if replay_args.mode not in CHUNKABLE_MODES:
        return (f'mode {replay_args.mode} keeps state across more than the previous frame; '
                f'chunking is for modes {", ".join(CHUNKABLE_MODES)}')
    if replay_args.limit is not None:
        return '--limit counts processed pairs of a whole bag'
    return None


def plan(meta: BagMetadata | None, chunk_s: float, values: dict) -> list:
    """The windows of one bag: ``[None]`` (the whole bag) when it is not longer than
    ``chunk_s`` (or ``chunk_s`` is 0, or its metadata is unreadable)."""
    if not chunk_s or meta is None or meta.duration_ns <= chunk_s * 1e9:
        return [None]
    chunk_ns = int(chunk_s * 1e9)
    count = math.ceil(meta.duration_ns / chunk_ns)
    lookback_ns = int((values['max_stamp_jump'] + values['sync_slop'] + LOOKBACK_MARGIN_S) * 1e9)
    edges = [meta.start_ns + k * chunk_ns for k in range(1, count)]
    starts, stops = [None, *edges], [*edges, None]
    return [replay.TimeWindow(start, stop, LEAD_IN_SETS if start is not None else 0,
                              lookback_ns if start is not None else 0)
            for start, stop in zip(starts, stops)]


def check_complete(replay_args, bag: Path, messages_read: int) -> None:
    """BagError when the chunks read fewer input messages than the bag's index lists (a
    damaged MCAP chunk can end a read silently; the whole-bag replay checks the same)."""
    with bag_io.open_reader(bag) as reader:
        roles = replay.select_topics(reader.connections, replay_args.mode, replay_args.topics,
                                     replay_args.values['input_transport'])
        expected = sum(c.msgcount for c in reader.connections if c.topic in roles.values())
    if messages_read < expected:
        raise bag_io.BagError(f'bag {bag} is truncated or corrupt: read {messages_read} of the '
                              f'{expected} messages its metadata lists')


def concatenate(parts: list[Path], out: Path, storage: str) -> dict:
    """Write the messages of ``parts`` (disjoint time ranges, in order) into one new bag,
    with each topic's type, definition and QoS; returns messages written per topic."""
    store = bag_io.typestore()
    with bag_io.BagWriter(out, storage, store) as writer:
        for part in parts:
            with bag_io.open_reader(part) as reader:
                bag_io.register_bag_types(store, reader.connections)
                for conn, log_ns, raw in bag_io.read_messages(reader, reader.connections):
                    writer.write_raw(conn.topic, conn.msgtype, log_ns, raw, source=conn)
        return dict(writer.counts)
