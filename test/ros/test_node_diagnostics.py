"""The node's /diagnostics in-process (real rclpy, no subprocess): statuses named after the
fully qualified node name, and ``subscribers.<output>``, the matched subscriptions counted on
the publishing side, following subscriptions of another participant as they come and go.
"""
import time

import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from romav2_ros.node import RoMaV2Node
from romav2_ros.pipeline import mode_outputs

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures('ros_env_guard')]


def started_node(context, namespace=None) -> RoMaV2Node:
    """The plain node, configured and active, matching with the oracle (cheap) matcher."""
    node = RoMaV2Node(context=context, namespace=namespace, parameter_overrides=[
        Parameter('mode', value='stereo'),
        Parameter('model_source', value='oracle_matchers:stereo'),
        Parameter('warmup', value=False)])
    node.start()
    return node


def stopped(node: RoMaV2Node) -> None:
    node.close()
    node.destroy_node()


def processing(node: RoMaV2Node) -> dict:
    (status,) = [s for s in node.diagnostics.statuses() if s.name.endswith(': processing')]
    return {kv.key: kv.value for kv in status.values}


def test_nodes_of_one_name_in_two_namespaces_have_distinct_statuses(context):
    """launch/multi_camera.launch.py: ``romav2_node`` in every camera's namespace. Named
    after get_name(), both nodes' statuses would be one to a diagnostic aggregator."""
    left, right = started_node(context, 'left_cam'), started_node(context, 'right_cam')
    try:
        names = {}
        for node in (left, right):
            statuses = node.diagnostics.statuses()
            assert {s.hardware_id for s in statuses} == {node.get_fully_qualified_name()}
            names[node.get_namespace()] = {s.name for s in statuses}
        assert '/left_cam/romav2_node: input' in names['/left_cam']
        assert '/right_cam/romav2_node: processing' in names['/right_cam']
        assert len(names['/left_cam']) == len(names['/right_cam']) >= 2
        assert not names['/left_cam'] & names['/right_cam']
    finally:
        stopped(left)
        stopped(right)


def wait_reported(node: RoMaV2Node, expected: dict, timeout: float = 20.0) -> dict:
    """Poll the processing status until its ``subscribers.*`` equal ``expected``. The node
    is not spun: the matched counts come from the DDS layer's discovery threads."""
    deadline = time.monotonic() + timeout
    while True:
        values = processing(node)
        got = {k[len('subscribers.'):]: int(v) for k, v in values.items()
               if k.startswith('subscribers.')}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_processing_status_counts_the_matched_subscriptions_of_each_output(context):
    node = started_node(context)
    other = Context()            # a second participant, as a subscriber in another process
    rclpy.init(context=other)
    try:
        listener = rclpy.create_node('listener', context=other)
        none = {key: 0 for key in mode_outputs('stereo')}
        assert wait_reported(node, none) == none
        warp = [listener.create_subscription(Image, '/romav2_node/warp', lambda m: None, 10)
                for _ in range(2)]
        depth = listener.create_subscription(Image, '/romav2_node/depth', lambda m: None, 10)
        expected = {**none, 'warp': 2, 'depth': 1}
        assert wait_reported(node, expected) == expected
        listener.destroy_subscription(warp[0])
        expected['warp'] = 1
        assert wait_reported(node, expected) == expected
        listener.destroy_subscription(depth)
        listener.destroy_subscription(warp[1])
        assert wait_reported(node, none) == none
    finally:
        rclpy.try_shutdown(context=other)
        stopped(node)
