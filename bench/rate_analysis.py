"""What one step of bench/bench_rate.py measured, from its records: the node's
``/diagnostics`` snapshots (cumulative counters, stage times, queue depths) and the
subscriber's arrivals per stamp against the publisher's stamps. The JSON fields are described
in bench_rate.py's docstring.
"""
from __future__ import annotations

import numpy as np

#: The node's cumulative counters (its /diagnostics) that the drain and the window read.
COUNTERS = ('received', 'synchronized', 'dropped', 'processed', 'model_sets',
            'skipped_no_subscribers', 'oom', 'worker_errors')


def snapshot(msg, received_ns: int) -> dict:
    """A DiagnosticArray as {'stamp_ns', 'received_ns', '<status suffix>': {key: value}}."""
    out = {'stamp_ns': msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
           'received_ns': received_ns}
    for st in msg.status:
        out[st.name.rpartition(': ')[2]] = {kv.key: kv.value for kv in st.values}
    return out


def counter(snap: dict, key: str):
    """The value of counter ``key`` in a snapshot's input/processing status, or None."""
    for status in ('input', 'processing'):
        value = snap.get(status, {}).get(key)
        if value is not None:
            return int(float(value))
    return None


def weighted_stage_means(snaps: list[dict]) -> dict[str, float]:
    """The node's ``latency_<stage>_ms_mean`` over ``snaps`` (consecutive, the first one only
    the reference), each period's mean weighted by the sets it processed."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for before, snap in zip(snaps, snaps[1:]):
        n = (counter(snap, 'processed') or 0) - (counter(before, 'processed') or 0)
        for key, value in snap.get('processing', {}).items():
            if key.startswith('latency_') and key.endswith('_ms_mean') and n > 0:
                stage = key[len('latency_'):-len('_ms_mean')]
                sums[stage] = sums.get(stage, 0.0) + float(value) * n
                weights[stage] = weights.get(stage, 0.0) + n
    return {stage: sums[stage] / weights[stage] for stage in sums}


def counter_deltas(start: dict, end: dict) -> dict[str, int]:
    """How much each of the node's cumulative counters (and ``bad_input.*`` reason) grew
    from snapshot ``start`` to ``end``; counters the node does not report are left out."""
    counts = {}
    for key in COUNTERS:
        a, b = counter(start, key), counter(end, key)
        if b is not None:
            counts[key] = b - (a or 0)
    for key, value in end.get('input', {}).items():
        if key.startswith('bad_input.'):   # a reason appears once it was first seen
            counts[key] = int(value) - int(start.get('input', {}).get(key, 0))
    return counts


def queue_peaks(snaps: list[dict]) -> dict[str, float]:
    """The largest value of each ``queue_*`` key of the node's statuses in ``snaps``."""
    peaks: dict[str, float] = {}
    for snap in snaps:
        for status in ('input', 'processing'):
            for key, value in snap.get(status, {}).items():
                if key.startswith('queue_'):
                    peaks[key] = max(peaks.get(key, float('-inf')), float(value))
    return peaks


def analyse_step(rate: float, published: dict, collected: dict, outputs: tuple,
                 warmup_s: float, model_ms: float | None) -> dict:
    """One step's numbers (module docstring) from the publisher's stamps and what the
    subscriber recorded. ``model_ms``: the stand-in's model time (None: the real model)."""
    stamps = published['stamps_ns']
    arrivals = {int(s): t for s, t in collected['arrivals'].items()}
    snaps = sorted(collected['diagnostics'], key=lambda s: s['stamp_ns'])
    warm_end = stamps[0] + warmup_s * 1e9
    window_snaps = [s for s in snaps if s['stamp_ns'] >= warm_end]
    if len(window_snaps) < 2:
        raise RuntimeError('no /diagnostics snapshot after the warm-up and after the drain; '
                           'use a longer --duration')
    start, end = window_snaps[0], window_snaps[-1]
    t0 = start['stamp_ns']
    window = [s for s in stamps if s > t0]
    ours = set(stamps)
    complete = {s: max(t.values()) for s, t in arrivals.items()
                if s in ours and all(k in t for k in outputs)}
    delivered = [s for s in window if s in complete]
    latencies = np.array([complete[s] - s for s in delivered]) / 1e6
    span_s = (window[-1] - window[0]) / 1e9 if len(window) > 1 else 0.0
    input_rate = (len(window) - 1) / span_s if span_s > 0 else float(rate)
    delivered_per_s = len(delivered) / len(window) * input_rate if window else 0.0
    counts = counter_deltas(start, end)
    stages = weighted_stage_means(window_snaps)
    through = 'model_sets' if 'model_sets' in counts else 'processed'
    finished_in_window = sum(1 for t in complete.values() if t > t0)
    if model_ms is not None:
        model_rate, model_rate_from = 1e3 / model_ms, 'stand-in model time'
    elif stages.get('model'):
        model_rate, model_rate_from = 1e3 / stages['model'], "the node's mean model stage"
    else:
        model_rate, model_rate_from = None, 'unknown'
    ceiling = min(input_rate, model_rate) if model_rate else input_rate
    return {
        'input_rate_hz': rate, 'input_rate_hz_measured': input_rate,
        'window_s': len(window) / input_rate if input_rate else 0.0,
        'published': len(window), 'delivered': len(delivered),
        'delivered_per_s': delivered_per_s,
        'model_rate_hz': model_rate, 'model_rate_from': model_rate_from,
        'share_of_min_input_model': delivered_per_s / ceiling if ceiling else None,
        'not_delivered_share': 1 - len(delivered) / len(window) if window else None,
        'lost_before_node': len(window) - counts['synchronized']
        if 'synchronized' in counts else None,
        'drops_before_model': counts.get('dropped'),
        'drops_after_model': counts[through] - finished_in_window if through in counts
        else None,
        'drops_after_model_counter': through,
        'latency_ms': {'median': float(np.median(latencies)) if len(latencies) else None,
                       'p95': float(np.percentile(latencies, 95)) if len(latencies) else None},
        'node_stage_ms': stages, 'queues': queue_peaks(window_snaps), 'node_counts': counts,
        'publisher_slipped': published['slipped'], 'drained': collected['drained'],
        # CPU seconds (all threads) of the publisher while it published and of the
        # subscriber since the previous step: what the two helpers took from the machine
        'publisher_cpu_s': published['cpu_s'], 'subscriber_cpu_s': collected['cpu_s'],
    }
