"""The node's executor: input callbacks on the spinning thread, the rest on a thread pool.

rclpy's ``MultiThreadedExecutor`` hands every ready callback to its thread pool. For a camera
stream (four topics at 30 Hz, 1 MB images) that costs per message a pool hop, a task kept in a
list the spinning thread scans on every turn, and wake-ups that make the spinning thread rebuild
its wait set in Python: all under the GIL. Measured with ``bench/bench_rate.py`` (py-spy on the
node, depth + points2 at 30 Hz) the spinning thread then took 86 % of a core, starved the
model and host stage threads of the GIL (a 32 ms stand-in model call took 270 ms) and the node
delivered 4 of 30 sets/s.

The input callbacks only hand a set to the model stage (microseconds), so
:class:`InputFirstExecutor` runs the callbacks of an :class:`InlineCallbackGroup` on the
spinning thread itself, in arrival order, as a single-threaded executor would. Everything else
(parameter and lifecycle services, timers) still goes to the pool: a lifecycle configure that
waits for the model build does not stop the services nor the inputs.

:func:`watch_for_shutdown` keeps an executor from missing a SIGINT/SIGTERM (see there).
"""
from __future__ import annotations

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor


class InlineCallbackGroup(MutuallyExclusiveCallbackGroup):
    """Callbacks that :class:`InputFirstExecutor` runs on its spinning thread: they must be
    short and never block (one at a time, like a mutually exclusive group)."""


class InputFirstExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` that runs :class:`InlineCallbackGroup` callbacks inline."""

    def wait_for_ready_callbacks(self, *args, **kwargs):
        """The next ready callback for the pool; inline ones are run on the way (a timeout,
        where given, restarts after each of them)."""
        while True:
            handler, entity, node = super().wait_for_ready_callbacks(*args, **kwargs)
            if not isinstance(getattr(entity, 'callback_group', None), InlineCallbackGroup):
                return handler, entity, node
            handler()
            if handler.exception() is not None:
                raise handler.exception()


#: How often :func:`watch_for_shutdown` wakes the executor, s.
SHUTDOWN_CHECK_PERIOD_S = 0.5


def watch_for_shutdown(node, period_s: float = SHUTDOWN_CHECK_PERIOD_S):
    """A timer on ``node`` that only wakes its executor, which checks its context after every
    wait. rclpy's signal thread triggers the executors' guard condition *before* it shuts the
    contexts down: an executor that wakes in between sees its context still valid and waits
    again, and when nothing else happens (a lifecycle node after ``shutdown``) it never sees
    the shutdown and the process does not end. Returns the timer."""
    return node.create_timer(period_s, _wake, callback_group=InlineCallbackGroup())


def _wake() -> None:
    """Nothing: the executor's check of its context after the wait is the point."""
