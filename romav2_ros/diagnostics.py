"""Counters, rates and latencies of the node, published as ``/diagnostics`` at 1 Hz.

Two statuses (``diagnostic_msgs/DiagnosticStatus``), hardware_id = the node's name:

* ``<node>: input``: rates of received messages and synchronised pairs, counts of received /
  synchronised / dropped (latest-only queue overflow) pairs, the queue depth, the count of each
  bad-input reason. WARN when no synchronised pair arrived for :data:`NO_INPUT_WARN_S` seconds,
  saying what to check, and naming the inputs that sent nothing (a camera_info that never
  arrives, a topic name that does not match).
* ``<node>: processing``: processed pairs, output rate, per-stage latency (mean and max over
  the last period, ms), skipped pairs (no subscribers), pairs lost to faults (``oom``: CUDA
  out of memory, ``worker_errors``: unexpected exceptions), GPU memory when CUDA is used.
  WARN while faults happened in the last period.

Updates come from the subscription callbacks and from the worker thread; a lock guards them.
The 1 Hz timer runs on the steady clock, so diagnostics keep flowing while a simulated clock is
paused.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

NO_INPUT_WARN_S = 5.0


class Diagnostics:
    """``node`` None: counters only (no publisher, no timer; in-process tests), named
    ``name``. ``inputs``: the input topics, whose last arrival is tracked (:meth:`seen`)."""

    def __init__(self, node, inputs_hint: str, device: str = 'cpu', inputs=(),
                 name: str = 'romav2_node'):
        self._node = node
        self._name = node.get_name() if node is not None else name
        self._hint = inputs_hint
        self._device = device
        self._started = time.monotonic()
        self._seen = {topic: None for topic in inputs}   # topic -> monotonic time of last msg
        self._lock = threading.Lock()
        self.counts = defaultdict(int)        # cumulative counters
        self.errors = defaultdict(int)        # bad-input reason -> count
        self.gauges = {}                      # current values (queue depth)
        self._period = defaultdict(int)       # counters of the current period (rates)
        self._latency = defaultdict(list)     # stage -> seconds in the current period
        self._last_pair = time.monotonic()
        self._last_publish = time.monotonic()
        if node is not None:
            from diagnostic_msgs.msg import DiagnosticArray
            from rclpy.clock import Clock, ClockType
            self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self._timer = node.create_timer(1.0, self.publish,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME))

    def seen(self, topic: str) -> None:
        """A message arrived on input ``topic``."""
        with self._lock:
            self._seen[topic] = time.monotonic()

    def _silent_inputs(self, now: float) -> list[str]:
        """'topic (never)' / 'topic (for N s)' for inputs silent for NO_INPUT_WARN_S."""
        out = []
        for topic, last in self._seen.items():
            if last is None:
                out.append(f'{topic} (nothing received)')
            elif now - last > NO_INPUT_WARN_S:
                out.append(f'{topic} (nothing for {now - last:.0f} s)')
        return out

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n
            self._period[key] += n
            if key == 'synchronized':
                self._last_pair = time.monotonic()

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def gauge(self, key: str, value) -> None:
        with self._lock:
            self.gauges[key] = value
            peak = f'{key}_max'
            self.gauges[peak] = max(self.gauges.get(peak, value), value)

    def latency(self, timings: dict) -> None:
        with self._lock:
            for stage, seconds in timings.items():
                self._latency[stage].append(seconds)

    def _gpu(self) -> dict:
        if not self._device.startswith('cuda'):
            return {}
        import torch
        allocated = torch.cuda.memory_allocated(self._device) / 2 ** 20
        reserved = torch.cuda.memory_reserved(self._device) / 2 ** 20
        return {'gpu_memory_allocated_MiB': f'{allocated:.0f}',
                'gpu_memory_reserved_MiB': f'{reserved:.0f}'}

    def statuses(self):
        """The two DiagnosticStatus of this moment (and start a new rate period)."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
        now = time.monotonic()
        with self._lock:
            dt = max(now - self._last_publish, 1e-3)
            self._last_publish = now
            rates = {k: v / dt for k, v in self._period.items()}
            latency = {k: v for k, v in self._latency.items() if v}
            counts, errors, gauges = dict(self.counts), dict(self.errors), dict(self.gauges)
            idle = now - self._last_pair
            silent = self._silent_inputs(now)
            faults = {k: self._period.get(k, 0) for k in ('oom', 'worker_errors')}
            self._period.clear()
            self._latency.clear()
        name = self._name

        def kv(d):
            return [KeyValue(key=k, value=str(v)) for k, v in d.items()]

        inp = DiagnosticStatus(name=f'{name}: input', hardware_id=name,
                               level=DiagnosticStatus.OK, message='receiving')
        inp.values = kv({f'{k}_rate_hz': f'{rates.get(k, 0.0):.2f}'
                         for k in ('received', 'synchronized')})
        inp.values += kv({k: counts.get(k, 0) for k in ('received', 'synchronized', 'dropped')})
        inp.values += kv(gauges) + kv({f'bad_input.{k}': v for k, v in errors.items()})
        if idle > NO_INPUT_WARN_S:
            inp.level = DiagnosticStatus.WARN
            missing = (f'; silent inputs: {", ".join(silent)}: check their topic names '
                       f'(remappings) and that the camera driver publishes them'
                       if silent and len(silent) < len(self._seen) else '')
            inp.message = (f'no synchronised input for {idle:.0f} s{missing}: check that '
                           f'{self._hint} are published, that their stamps match (exact sync, '
                           f'or within sync_slop), that the QoS is compatible (input_qos) and '
                           f'that use_sim_time agrees with the publisher clock')
        elif errors:
            inp.message = 'receiving; bad inputs: ' + ', '.join(sorted(errors))

        proc = DiagnosticStatus(name=f'{name}: processing', hardware_id=name,
                                level=DiagnosticStatus.OK, message='ok')
        proc.values = kv({'processed': counts.get('processed', 0),
                          'skipped_no_subscribers': counts.get('skipped', 0),
                          'oom': counts.get('oom', 0),
                          'worker_errors': counts.get('worker_errors', 0),
                          'output_rate_hz': f'{rates.get("processed", 0.0):.2f}'})
        if any(faults.values()):
            proc.level = DiagnosticStatus.WARN
            proc.message = ('pairs lost to faults in the last period: ' +
                            ', '.join(f'{k} {v}' for k, v in faults.items() if v))
        for stage, values in sorted(latency.items()):
            proc.values += kv({f'latency_{stage}_ms_mean': f'{1e3 * sum(values) / len(values):.1f}',
                               f'latency_{stage}_ms_max': f'{1e3 * max(values):.1f}'})
        proc.values += kv(self._gpu())
        return [inp, proc]

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        msg = DiagnosticArray(status=self.statuses())
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(msg)
