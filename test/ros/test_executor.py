"""The node's executor (romav2_ros.executor): input callbacks run on the spinning thread and
keep running while a pool callback blocks (a lifecycle configure waiting for the model build);
the node's input subscriptions are in that inline group. In-process rclpy, private context.
Why it matters (measured, not asserted here): bench/bench_rate.py, docs/performance.md."""
import threading
import time

import pytest
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from std_msgs.msg import UInt32

from romav2_ros.executor import InlineCallbackGroup, InputFirstExecutor

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures('ros_env_guard')]

MESSAGES = 20


def test_inline_callbacks_run_on_the_spinning_thread_while_a_pool_callback_blocks(context):
    """A timer callback in an ordinary group blocks a pool thread for 3 s; meanwhile every
    message of an inline-group subscription is delivered, each on the thread that spins (a
    MultiThreadedExecutor would run them on pool threads; a single-threaded one not at all
    during the block)."""
    node = rclpy.create_node('romav2_executor_test', context=context)
    arrivals = []                                       # (thread id, monotonic time)
    node.create_subscription(UInt32, 'numbers', lambda msg: arrivals.append(
        (threading.get_ident(), time.monotonic())), QoSProfile(depth=MESSAGES),
        callback_group=InlineCallbackGroup())
    blocked = threading.Event()

    def block_once():
        timer.cancel()
        blocked.set()
        time.sleep(3.0)
    timer = node.create_timer(0.0, block_once, callback_group=MutuallyExclusiveCallbackGroup())
    publisher = node.create_publisher(UInt32, 'numbers', QoSProfile(depth=MESSAGES))
    executor = InputFirstExecutor(num_threads=2, context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert blocked.wait(10)
        block_started = time.monotonic()
        for i in range(MESSAGES):
            publisher.publish(UInt32(data=i))
            time.sleep(0.02)
        deadline = block_started + 2.5                  # still inside the 3 s block
        while len(arrivals) < MESSAGES and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(arrivals) == MESSAGES
        assert {thread for thread, _ in arrivals} == {spinner.ident}
        assert max(t for _, t in arrivals) < block_started + 3.0
    finally:
        executor.shutdown()
        node.destroy_node()


def test_the_node_subscribes_its_inputs_in_the_inline_group(context):
    """Every input subscription of the node (images and camera infos) is run inline."""
    from romav2_ros.node import INPUT_TOPICS, RoMaV2Node
    node = RoMaV2Node(context=context, parameter_overrides=[
        Parameter('model_source', value='oracle_matchers:stereo'),
        Parameter('warmup', value=False)])
    try:
        node.start()
        inputs = {node.resolve_topic_name(t) for t in INPUT_TOPICS['stereo']}
        groups = {s.topic_name: s.callback_group for s in node.subscriptions
                  if s.topic_name in inputs}
        assert set(groups) == inputs
        assert all(isinstance(g, InlineCallbackGroup) for g in groups.values())
    finally:
        node.close()
        node.destroy_node()


SHUTDOWN_SCRIPT = """
import sys, threading, time
import rclpy
from romav2_ros.executor import InputFirstExecutor, watch_for_shutdown
rclpy.init()
node = rclpy.create_node('romav2_shutdown_test')
if sys.argv[1] == 'watched':
    watch_for_shutdown(node, period_s=0.2)
executor = InputFirstExecutor(num_threads=2)
executor.add_node(node)
ended = threading.Event()
def spin():
    try:
        executor.spin()
    except (ExternalShutdownException, ShutdownException):
        pass
    ended.set()
threading.Thread(target=spin, daemon=True).start()
time.sleep(0.5)
context = rclpy.utilities.get_default_context()
with context.handle:
    context.handle.shutdown()
print('ended' if ended.wait(2.0) else 'still spinning', flush=True)
"""


@pytest.mark.parametrize('watched', [False, True])
def test_a_shutdown_that_does_not_wake_the_executor_still_ends_its_spin(watched):
    """rclpy's signal thread triggers the executors' guard condition, then shuts the context
    down; an executor that woke in between waits again. Emulated in a process of its own:
    the context shut down without waking anyone (its C++ handle, as that thread does). With
    nothing else to do the spin never ends, unless watch_for_shutdown's timer wakes it (within
    its period). Seen: a lifecycle node after ``shutdown`` that a SIGINT did not end."""
    import os
    import subprocess
    import sys

    from node_harness import profile_env
    # the harness's DDS profile (no shared-memory transport: a process that ends while its
    # participant lives would leave segments behind for the next tests)
    env = {**os.environ, **profile_env()}
    out = subprocess.run([sys.executable, '-c', SHUTDOWN_SCRIPT,
                          'watched' if watched else 'unwatched'],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip().splitlines()[-1] == ('ended' if watched else 'still spinning'), \
        out.stderr[-2000:]
