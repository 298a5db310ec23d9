"""The node's threads around a configure: services answer while the model is built, and a
configure that fails in any way leaves no thread behind (in-process rclpy, one executor as
the executables run it)."""
import threading
import time

import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from romav2_ros.executor import InputFirstExecutor
from romav2_ros.node import RoMaV2LifecycleNode
from romav2_ros.process import EXECUTOR_THREADS

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures('ros_env_guard')]


def lifecycle_node(context, model_source):
    return RoMaV2LifecycleNode(context=context, parameter_overrides=[
        Parameter('model_source', value=model_source), Parameter('warmup', value=False)])


STAGES = ['romav2_decode', 'romav2_host', 'romav2_model']


def stage_threads():
    return [t.name for t in threading.enumerate() if t.name in STAGES]


def call(client, request, timeout):
    """A service call's reply within ``timeout`` s, or None (the executor spins elsewhere)."""
    future = client.call_async(request)
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return future.result() if future.done() else None


def test_lifecycle_and_parameter_services_answer_while_configure_builds_the_model(context):
    """configure takes 3 s (the matcher's build): meanwhile get_state and get_parameters are
    answered (before: the executor's one thread was inside on_configure)."""
    node = lifecycle_node(context, 'oracle_matchers:slow_build')
    client = rclpy.create_node('romav2_threads_client', context=context)
    executor = InputFirstExecutor(num_threads=EXECUTOR_THREADS, context=context)
    executor.add_node(node)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        change = client.create_client(ChangeState, '/romav2_node/change_state')
        get_state = client.create_client(GetState, '/romav2_node/get_state')
        get_params = client.create_client(GetParameters, '/romav2_node/get_parameters')
        for c in (change, get_state, get_params):
            assert c.wait_for_service(timeout_sec=20)
        assert call(get_state, GetState.Request(), 10).current_state.label == 'unconfigured'
        request = ChangeState.Request()
        request.transition.id = Transition.TRANSITION_CONFIGURE
        configured = change.call_async(request)
        time.sleep(0.5)                                     # inside the 3 s build
        assert not configured.done()
        started = time.monotonic()
        state = call(get_state, GetState.Request(), 2.0)
        names = call(get_params, GetParameters.Request(names=['mode']), 2.0)
        answered = time.monotonic() - started
        assert state is not None and state.current_state.label == 'configuring'
        assert names is not None and names.values[0].string_value == 'stereo'
        assert answered < 2.0 and not configured.done()
        deadline = time.monotonic() + 30
        while not configured.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert configured.result().success
        assert sorted(stage_threads()) == STAGES
    finally:
        executor.shutdown()
        node.close()
        node.destroy_node()
        client.destroy_node()
    assert stage_threads() == []


def test_a_configure_failing_in_any_way_leaves_the_node_unconfigured_without_threads(
        context, monkeypatch):
    """Any exception in configure (here: opening the topics) fails the transition, stops the
    stage threads, and a later configure works (before: only three exception types were
    caught; anything else left a live worker in an "unconfigured" node)."""
    node = lifecycle_node(context, 'oracle_matchers:stereo')
    try:
        def broken(self):
            raise KeyError('a fault while opening the topics')
        with monkeypatch.context() as m:
            m.setattr(RoMaV2LifecycleNode, '_open_topics', broken)
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert stage_threads() == []
        assert node._state_machine.current_state[1] == 'unconfigured'
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert sorted(stage_threads()) == STAGES
    finally:
        node.close()
        node.destroy_node()
    assert stage_threads() == []


def test_max_stamp_jump_changed_at_runtime_reaches_the_synchroniser(context):
    """The synchroniser's jump-back limit follows the runtime parameter (before: it kept its
    startup value while the pipeline took the new one)."""
    from romav2_ros.node import RoMaV2Node
    node = RoMaV2Node(context=context, parameter_overrides=[
        Parameter('model_source', value='oracle_matchers:stereo'),
        Parameter('warmup', value=False)])
    try:
        node.start()
        assert node._sync.max_stamp_jump == pytest.approx(5.0)
        result = node.set_parameters([Parameter('max_stamp_jump', value=0.5)])[0]
        assert result.successful
        assert node._sync.max_stamp_jump == pytest.approx(0.5)
        assert node.pipeline.config.max_stamp_jump == 0.5
    finally:
        node.close()
        node.destroy_node()
