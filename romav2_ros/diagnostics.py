"""Counters, rates and latencies of the node, published as ``/diagnostics`` at 1 Hz.

Statuses (``diagnostic_msgs/DiagnosticStatus``) named after the node's fully qualified name
(``<node>`` = e.g. ``/romav2_node``, ``/left_cam/romav2_node``: nodes of the same name in
several namespaces stay apart in a diagnostic aggregator), hardware_id = that name:

* ``<node>: input``: rates of received messages and synchronised pairs, counts of received /
  synchronised / dropped (latest-only queue overflow) pairs, the queue depth, the count of each
  bad-input reason. WARN when no synchronised pair arrived for :data:`NO_INPUT_WARN_S` seconds,
  saying what to check, and naming the inputs that sent nothing (a camera_info that never
  arrives, a topic name that does not match).
* ``<node>: processing``: processed sets, ``model_sets`` (sets through the model stage) and
  ``lost_after_model`` (of those, lost to a fault in the host stage), output rate, the time of
  each stage (``latency_<stage>_ms_mean`` / ``_max`` over the last period: ``decode``,
  ``model``, ``launch``, ``products``, ``pose``, ``messages``, ``viz``, ``publish``; see
  ``pipeline.py``), skipped sets (no subscribers), sets lost to faults (``oom``: CUDA out of
  memory, ``worker_errors``: unexpected exceptions), GPU memory when CUDA is used, and
  ``subscribers.<output>`` (``subscribers.tf`` for the /tf broadcaster): the subscriptions
  each output publisher has matched, counted on the publishing side, so a message published
  now reaches that many (a subscriber's own view of the graph can see the node's publisher
  before this publisher has matched it, and a volatile message sent meanwhile is lost to it).
  The queues' depths are in the input status: ``queue_depth`` (sets waiting for the decode
  stage), ``decoded_depth`` (decoded sets waiting for the model stage) and ``handoff_depth``
  (sets waiting for the host stage), each with its ``_max``.
  WARN while faults happened in the last period.
* ``<node>: stereo calibration`` (stereo mode): on rectified inputs a true match has no
  vertical disparity, so the matches measure the calibration error: the median and 90th
  percentile of ``|y_A - y_B|`` over confident matches (px, the latest pair) and, when the pose
  is estimated, the angle between the estimated and the calibrated baseline. WARN "stereo
  calibration may be off: ..." above ``rectification_warn_px`` / ``baseline_warn_deg``.
* ``<node>: odometry`` (stereo_odometry mode): tracking state (OK: the latest frame was posed
  against its keyframe; LOST: it got no pose; RESET: a new segment started, at the first
  frame, after a stamp jump, or after tracking was lost for longer than ``max_lost_frames``),
  the latest inlier ratio and mean reprojection error (px), the segment, the keyframe (id,
  frames since it was made, why it was made) and the counts of resets and lost frames. WARN
  while not OK.

Updates come from the subscription callbacks and from the stage threads; a lock guards them.
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
    ``name``. ``inputs``: the input topics, whose last arrival is tracked (:meth:`seen`).
    ``output_publishers``: a callable returning {output key: rclpy publisher} at the time of
    the call (the node's current publishers), reported as ``subscribers.<key>``."""

    def __init__(self, node, inputs_hint: str, device: str = 'cpu', inputs=(),
                 name: str = '/romav2_node', mode: str = 'stereo', output_publishers=None):
        self._node = node
        self._name = node.get_fully_qualified_name() if node is not None else name
        self._output_publishers = output_publishers
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
        self._stereo = mode in ('stereo', 'stereo_odometry')
        self._odometry = mode == 'stereo_odometry'
        self._health = None                   # RectificationHealth of the latest pair
        self._tracking = (None, {})           # odometry state and quality of the latest set
        #: WARN limits of the calibration check (the node keeps them up to date).
        self.health_limits = {'rectification_warn_px': 1.0, 'baseline_warn_deg': 2.0}
        self.state = None                     # lifecycle state label, shown when set
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

    def health(self, health) -> None:
        """The rectification check of the latest stereo pair (a RectificationHealth)."""
        with self._lock:
            self._health = health

    def odometry(self, state: str, quality: dict) -> None:
        """The odometry's tracking state after the latest set (OK / LOST / RESET)."""
        with self._lock:
            if state != 'OK':
                self.counts[f'odometry_{state.lower()}'] += 1
            self._tracking = (state, dict(quality))

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

    def _subscribers(self) -> dict:
        """``subscribers.<key>``: the subscriptions each output publisher has matched."""
        if self._output_publishers is None:
            return {}
        return {f'subscribers.{key}': pub.get_subscription_count()
                for key, pub in self._output_publishers().items()}

    def statuses(self):
        """The DiagnosticStatus of this moment (and start a new rate period)."""
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
            health, limits = self._health, dict(self.health_limits)
            tracking = self._tracking
            self._period.clear()
            self._latency.clear()
        name = self._name

        def kv(d):
            return [KeyValue(key=k, value=str(v)) for k, v in d.items()]

        inp = DiagnosticStatus(name=f'{name}: input', hardware_id=name,
                               level=DiagnosticStatus.OK, message='receiving')
        inp.values = kv({f'{k}_rate_hz': f'{rates.get(k, 0.0):.2f}'
                         for k in ('received', 'synchronized')})
        inp.values += kv({k: counts.get(k, 0) for k in ('received', 'synchronized', 'dropped',
                                                        'ignored_inactive')})
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
                          'model_sets': counts.get('model_sets', 0),
                          'lost_after_model': counts.get('lost_after_model', 0),
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
        proc.values += kv(self._gpu()) + kv(self._subscribers())
        if self.state is not None:
            proc.values += kv({'lifecycle_state': self.state})
        statuses = [inp, proc]
        if self._stereo:
            statuses.append(_calibration_status(name, health, limits, DiagnosticStatus, kv))
        if self._odometry:
            statuses.append(_odometry_status(name, tracking, counts, DiagnosticStatus, kv))
        return statuses

    def close(self) -> None:
        """Destroy the timer and the publisher (a lifecycle cleanup)."""
        if self._node is not None:
            self._node.destroy_timer(self._timer)
            self._node.destroy_publisher(self._pub)
            self._node = None

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        msg = DiagnosticArray(status=self.statuses())
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(msg)


def _odometry_status(name, tracking, counts, DiagnosticStatus, kv):
    """``<node>: odometry``: tracking state and quality of the latest set."""
    state, quality = tracking
    st = DiagnosticStatus(name=f'{name}: odometry', hardware_id=name,
                          level=DiagnosticStatus.OK, message='tracking')
    st.values = kv({'tracking': state or 'WAITING',
                    'resets': counts.get('odometry_reset', 0),
                    'lost': counts.get('odometry_lost', 0)})
    st.values += kv({k: f'{v:.3f}' if isinstance(v, float) else v for k, v in quality.items()})
    if state is None:
        st.message = 'no stereo pair processed yet'
    elif state != 'OK':
        st.level = DiagnosticStatus.WARN
        st.message = {'LOST': 'tracking lost: no metric pose for the latest frame (see '
                              'bad_input.pose_failed); the odometry holds its last pose with an '
                              'inflated covariance, and the next frames try the last keyframe '
                              'again (max_lost_frames, then a new segment)',
                      'RESET': 'a new odometry segment started (first frame, stamp jump, or '
                               'tracking lost for longer than max_lost_frames): the motion '
                               'across the gap is unknown (covariance inflated)'}[state]
    return st


def _calibration_status(name, health, limits, DiagnosticStatus, kv):
    """``<node>: stereo calibration`` from the latest RectificationHealth (None: no pair yet)."""
    st = DiagnosticStatus(name=f'{name}: stereo calibration', hardware_id=name,
                          level=DiagnosticStatus.OK, message='ok')
    if health is None or not health.num_matches:
        st.message = 'no rectified stereo pair with confident matches yet'
        return st
    st.values = kv({'vertical_disparity_median_px': f'{health.vertical_median_px:.3f}',
                    'vertical_disparity_p90_px': f'{health.vertical_p90_px:.3f}',
                    'confident_matches': health.num_matches})
    problems = []
    if health.vertical_median_px > limits['rectification_warn_px']:
        problems.append(f'median vertical disparity {health.vertical_median_px:.2f} px '
                        f'(90th percentile {health.vertical_p90_px:.2f} px) over '
                        f'{health.num_matches} confident matches, limit '
                        f'{limits["rectification_warn_px"]:g} px')
    if health.baseline_angle_deg is not None:
        st.values += kv({'baseline_angle_deg': f'{health.baseline_angle_deg:.3f}'})
        if health.baseline_angle_deg > limits['baseline_warn_deg']:
            problems.append(f'estimated baseline {health.baseline_angle_deg:.2f} deg from the '
                            f'calibrated one, limit {limits["baseline_warn_deg"]:g} deg')
    if problems:
        st.level = DiagnosticStatus.WARN
        st.message = 'stereo calibration may be off: ' + '; '.join(problems) + \
            ' (recalibrate, or check that both images are rectified with this calibration)'
    return st
