"""The harness's wait for the node's publishing side (node_harness.wait_node_subscribers),
against a fake /diagnostics stream: it trusts only the node's own report of its matched
subscriptions, from a message received after the wait began, of the named node."""
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.context import Context
from sensor_msgs.msg import Image

from node_harness import reported_subscribers, subscribers_reported

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures('ros_env_guard')]


def report(node='/romav2_node', **subscribers) -> DiagnosticArray:
    """A DiagnosticArray as the node publishes it: input and processing statuses."""
    inp = DiagnosticStatus(name=f'{node}: input', hardware_id=node,
                           values=[KeyValue(key='received', value='0')])
    proc = DiagnosticStatus(name=f'{node}: processing', hardware_id=node, values=[
        KeyValue(key='processed', value='0')] + [
        KeyValue(key=f'subscribers.{k}', value=str(v)) for k, v in subscribers.items()])
    return DiagnosticArray(status=[inp, proc])


def test_the_latest_report_of_the_named_node_decides():
    assert reported_subscribers([]) is None and not subscribers_reported([], ['warp'])
    stream = [report(warp=1, tf=1), report(warp=0, tf=1)]        # a subscriber went away
    assert reported_subscribers(stream) == {'warp': 0, 'tf': 1}
    assert not subscribers_reported(stream, ['warp']) and subscribers_reported(stream, ['tf'])
    assert not subscribers_reported(stream, ['tf'], n=2)
    assert not subscribers_reported(stream, ['odometry'])         # no such publisher
    stream.append(report('/left_cam/romav2_node', warp=3))        # another camera's node
    assert reported_subscribers(stream) == {'warp': 0, 'tf': 1}
    assert subscribers_reported(stream, ['warp'], n=3, node='/left_cam/romav2_node')


@pytest.fixture
def fake_node():
    """A node in a context of its own (another participant, like the node's process), with
    a warp publisher (so the graph shows one) and a /diagnostics publisher."""
    ctx = Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('romav2_node', context=ctx)
    node.create_publisher(Image, '/romav2_node/warp', 10)
    yield node.create_publisher(DiagnosticArray, '/diagnostics', 10)
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def test_waits_for_a_fresh_report_of_the_publishing_side(tester, fake_node):
    diagnostics = fake_node
    tester.record_diagnostics()
    tester.spin_until(lambda: diagnostics.get_subscription_count() > 0, 30, 'the tester')
    tester.spin_until(lambda: tester.node.count_publishers('/romav2_node/warp') > 0, 30,
                      'the warp publisher in the graph')
    diagnostics.publish(report(warp=1))
    tester.spin_until(lambda: tester.diag, 10, 'the first report')
    # Received before the wait began: it may describe publishers since destroyed.
    with pytest.raises(AssertionError, match=r'latest: None'):
        tester.wait_node_subscribers(['warp'], timeout=1.5)
    # The graph shows the warp publisher (what the old wait looked at); it matched nobody.
    diagnostics.publish(report(warp=0))
    with pytest.raises(AssertionError, match=r"subscribers.* >= 1 of \['warp'\].*'warp': 0"):
        tester.wait_node_subscribers(['warp'], timeout=1.5)
    diagnostics.publish(report(warp=1))
    tester.wait_node_subscribers(['warp'], timeout=10)
