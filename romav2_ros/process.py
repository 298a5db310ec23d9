"""The node's process: spin, start the node from the executor, shut down on SIGINT/SIGTERM,
exit fast.

:func:`run` is what both console scripts (``romav2_node``, ``romav2_lifecycle_node``; their
``main`` functions are in ``romav2_ros/node.py``) do around their node: the executor
(:class:`~romav2_ros.executor.InputFirstExecutor`, :data:`EXECUTOR_THREADS` pool threads),
the start as the executor's first callback (so the node's services answer while it configures;
a :class:`StartupError` or invalid parameters end the process with status 1 and the reason in
the log), the shutdown on a signal at any moment (also while the node or the executor is being
created), and a fast exit once everything is released.
"""
from __future__ import annotations

import atexit
import ctypes
import faulthandler
import logging
import os
import signal
import sys

import rclpy
import rclpy.exceptions
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException

from romav2_ros.executor import InputFirstExecutor, watch_for_shutdown

#: Executor pool threads: parameter and lifecycle services, timers (the 1 Hz diagnostics); the
#: input callbacks run on the spinning thread (romav2_ros.executor).
EXECUTOR_THREADS = 3
#: The console scripts that end with :func:`_exit_now`.
CONSOLE_SCRIPTS = ('romav2_node', 'romav2_lifecycle_node')


class StartupError(RuntimeError):
    """The node cannot start; the message says what to do."""


def run(make_node, start, name: str) -> int:
    """Create the node (``make_node()``, logging as ``name``), spin, and ``start(node)`` from
    the executor (so that its services answer meanwhile), until SIGINT/SIGTERM; the exit
    status. Run as a console script, the process then ends at once (:func:`_exit_now`)."""
    log = rclpy.logging.get_logger(name)
    # `kill -USR1 <pid>`: every thread's Python stack to stderr (a node that seems stuck)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    node = None
    status = 0
    failure = []
    try:
        node = make_node()
        executor = InputFirstExecutor(num_threads=EXECUTOR_THREADS)
        executor.add_node(node)
        watch_for_shutdown(node)

        def start_once():
            timer.cancel()
            try:
                start(node)
            except Exception as exc:  # noqa: BLE001 - reported below, exit status 1
                failure.append(exc)
                rclpy.try_shutdown()          # ends the spin
        timer = node.create_timer(0.0, start_once,
                                  callback_group=MutuallyExclusiveCallbackGroup())
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception:
            if rclpy.ok():
                raise
            # SIGINT/SIGTERM shut the context down while the executor was building its wait
            # set: rclpy raises RCLError ("context is not valid") instead of
            # ExternalShutdownException there. That is a requested shutdown, not a failure.
        if failure:
            raise failure[0]
    except KeyboardInterrupt:
        pass
    except StartupError as exc:
        log.fatal(str(exc))
        status = 1
    except (ValueError, rclpy.exceptions.ParameterException) as exc:
        log.fatal(f'invalid parameters: {exc}')
        status = 1
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM shut the context down while the node or the executor was being
        # created: a requested shutdown, not a failure.
    finally:
        if node is not None:
            # After SIGINT/SIGTERM the context is shut down already: the node's own logger
            # (and its children, which share its rosout) would add rcl's "Failed to publish
            # log message to rosout" after the line; a logger of its own has no rosout.
            exit_log = log if rclpy.ok() else rclpy.logging.get_logger(name + '.exit')
            exit_log.info('shutting down')
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        _release_context()
    if os.path.basename(sys.argv[0]) in CONSOLE_SCRIPTS:
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """The console script's exit: everything is shut down (stage threads joined, node
    destroyed, DDS participant released), so after the atexit handlers and the logging and
    stdio flushes skip the interpreter's teardown of torch and its extensions, which takes
    0.7 s to several seconds on a loaded machine and would push SIGINT/SIGTERM shutdown
    past 2 s."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)        # C stdio: rcutils' console log lines
    os._exit(status)


def _release_context() -> None:
    """Destroy the default rclpy context now (its DDS participant and shared memory)
    rather than whenever the garbage collector gets to it."""
    try:
        from rclpy.utilities import get_default_context
        context = get_default_context()
        destroy = getattr(context, 'destroy', None)
        if destroy is not None:
            destroy()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
