"""The managed node (``romav2_lifecycle_node``) driven from a second process through its
lifecycle services, outputs checked in every state; a weights failure at configure; autostart.
"""
import signal

import pytest
from sensor_msgs.msg import CameraInfo, Image

import oracle_matchers as om
from node_harness import LifecycleClient, NodeProcess, Tester

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.usefixtures('ros_env_guard')]

TOPICS = {'stereo': ('left/image_rect', 'left/camera_info', 'right/image_rect',
                     'right/camera_info'),
          'sequential': ('image', 'camera_info')}
EXE = 'romav2_lifecycle_node'


class Feed:
    """Publishes the mode's inputs, one set per call, and counts the node's outputs."""

    def __init__(self, tester: Tester, mode: str):
        self.t, self.mode, self.k = tester, mode, 0
        qos = tester.reliable(10)
        self.pubs = [tester.publisher(Image if 'image' in tp else CameraInfo, '/' + tp, qos)
                     for tp in TOPICS[mode]]
        self.frames = om.sequence_frames(40)
        tester.record(Image, '/romav2_node/warp', 'warp')
        tester.record_diagnostics()

    def connected(self):
        """Our input publishers matched the node's subscriptions, and its (current) warp
        publisher matched ours."""
        self.t.spin_until(lambda: all(p.get_subscription_count() > 0 for p in self.pubs), 60,
                          'the node\'s subscriptions')
        self.t.wait_node_subscribers(['warp'])

    def publish(self):
        from builtin_interfaces.msg import Time
        stamp = Time(sec=50 + self.k // 10, nanosec=(self.k % 10) * 100_000_000)
        if self.mode == 'stereo':
            msgs = om.stereo_inputs(stamp, seed=self.k)
        else:
            msgs = (om.image_msg(self.frames[self.k], 'cam', stamp), om.camera_info('cam', stamp))
        for pub, msg in zip(self.pubs, msgs):
            pub.publish(msg)
        self.k += 1

    def outputs_after(self, sets: int, expect: bool) -> int:
        """Publish ``sets`` sets; wait for outputs if ``expect``, else make sure none come."""
        before = len(self.t.received['warp'])
        for _ in range(sets):
            self.publish()
            self.t.spin_for(0.3)
        if expect:
            self.t.spin_until(lambda: len(self.t.received['warp']) > before, 60, 'an output')
        else:
            self.t.spin_for(1.5)
        return len(self.t.received['warp']) - before


@pytest.mark.parametrize('mode', ['stereo', 'sequential'])
def test_state_machine(tester, tmp_path, mode):
    node = NodeProcess({'mode': mode, 'model_source': f'oracle_matchers:{mode}',
                        'output_qos_depth': 10}, tmp_path / 'node.log', executable=EXE)
    try:
        lc = LifecycleClient(tester)
        assert lc.state() == 'unconfigured'
        assert 'configure' in lc.transitions()
        assert tester.node.count_publishers('/romav2_node/warp') == 0   # nothing before
        feed = Feed(tester, mode)

        assert lc.change('configure') and lc.state() == 'inactive'
        assert 'activate' in lc.transitions()
        feed.connected()
        assert feed.outputs_after(2, expect=False) == 0                 # inactive: ignored
        tester.spin_until(lambda: int(tester.diag_values(': input').get(
            'ignored_inactive', 0)) >= 2, 10, 'ignored inputs counted')
        assert tester.diag_values(': processing')['lifecycle_state'] == 'inactive'

        assert lc.change('activate') and lc.state() == 'active'
        assert feed.outputs_after(3, expect=True) >= 1
        assert lc.change('deactivate') and lc.state() == 'inactive'
        tester.spin_for(0.5)
        assert feed.outputs_after(2, expect=False) == 0
        assert lc.change('activate')
        assert feed.outputs_after(3, expect=True) >= 1                  # a fresh sequence

        assert lc.change('deactivate') and lc.change('cleanup')
        assert lc.state() == 'unconfigured'
        tester.spin_until(lambda: tester.node.count_publishers('/romav2_node/warp') == 0, 30,
                          'the publishers destroyed by cleanup')
        assert lc.change('configure') and lc.change('activate')         # the matcher again
        feed.connected()
        assert feed.outputs_after(3, expect=True) >= 1
        assert lc.change('shutdown') and lc.state() == 'finalized'
        assert node.proc.poll() is None
    finally:
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.output()
    log = node.output()
    assert log.count('configured (inactive)') == 2 and log.count('ready: mode=') == 3


def test_weights_failure_keeps_the_node_unconfigured_and_alive(tester, tmp_path):
    node = NodeProcess({'model_source': 'oracle_matchers:missing_weights'},
                       tmp_path / 'node.log', executable=EXE)
    try:
        lc = LifecycleClient(tester)
        assert not lc.change('configure')
        assert lc.state() == 'unconfigured' and 'configure' in lc.transitions()
        assert node.proc.poll() is None
        assert tester.node.count_publishers('/romav2_node/warp') == 0
        assert 'configure failed, staying unconfigured' in node.output()
        assert 'weights:=' in node.output()                              # says what to do
        assert lc.change('shutdown') and lc.state() == 'finalized'
    finally:
        rc = node.stop(signal.SIGINT)
    assert rc == 0, node.output()


def test_autostart(tester, tmp_path):
    node = NodeProcess({'mode': 'stereo', 'model_source': 'oracle_matchers:stereo',
                        'autostart': True, 'output_qos_depth': 10}, tmp_path / 'node.log',
                       executable=EXE)
    try:
        lc = LifecycleClient(tester)
        tester.spin_until(lambda: lc.state() == 'active', 60, 'active by itself')
        feed = Feed(tester, 'stereo')
        feed.connected()
        assert feed.outputs_after(2, expect=True) >= 1
    finally:
        rc = node.stop(signal.SIGTERM)
    assert rc == 0, node.output()
