"""romav2-play into a live graph: /clock and the bag's messages, in order, with sim time."""
import subprocess
import time

import pytest

import replay_doubles as doubles
from romav2_ros import bag_io, messages

pytestmark = pytest.mark.ros


def spin_until(node, done, timeout_s):
    import rclpy
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    return done()


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_player_publishes_clock_and_messages_in_order(tmp_path, storage, ros_env_guard,
                                                      play_exe, script_env):
    import rclpy
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image

    frames = 6
    stamps = doubles.write_sequence_bag(tmp_path / 'bag', storage, frames=frames,
                                        period_ns=50_000_000)
    rclpy.init()
    proc = None
    try:
        node = rclpy.create_node('play_checker', parameter_overrides=[
            Parameter('use_sim_time', Parameter.Type.BOOL, True)])
        images, infos, clocks = [], [], []
        # The image topic is remapped on the player's command line, like ros2 bag play.
        node.create_subscription(Image, '/remapped/image', images.append, 10)
        node.create_subscription(CameraInfo, '/camera/camera_info', infos.append, 10)
        node.create_subscription(Clock, '/clock', clocks.append, 100)
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(play_exe), str(tmp_path / 'bag'), '--rate', '1.0',
             '--wait-for-subscribers', '20',
             '--ros-args', '-r', '/camera/image_raw:=/remapped/image'],
            env=script_env, stderr=subprocess.PIPE, text=True)
        assert spin_until(node, lambda: len(images) == frames and len(infos) == frames, 60), \
            (len(images), len(infos))
        elapsed = time.monotonic() - started
        assert proc.wait(30) == 0
        spin_until(node, lambda: False, 0.5)  # callbacks still queued (e.g. the last /clock)
        err = proc.stderr.read()
        assert f'published {2 * frames} messages on 2 topics' in err, err

        assert [messages.stamp_ns(m.header.stamp) for m in images] == stamps
        assert [messages.stamp_ns(m.header.stamp) for m in infos] == stamps
        assert images[0].height == 48 and images[0].encoding == 'rgb8'
        clock_ns = [messages.stamp_ns(c.clock) for c in clocks]
        assert clock_ns == sorted(clock_ns)
        assert stamps[0] <= clock_ns[0] and clock_ns[-1] == stamps[-1]
        # Between messages /clock ticks too (100 Hz for 0.25 s of bag time here).
        assert len(clocks) > frames
        # The node's sim-time clock is the bag's clock, not the wall clock.
        assert node.get_clock().now().nanoseconds == stamps[-1]
        # Recorded spacing (0.25 s in all) is kept; only a loose upper bound on a busy box.
        assert elapsed >= 0.25
    finally:
        if proc is not None:
            stop(proc)
        rclpy.try_shutdown()


def test_player_reports_a_broken_bag(tmp_path, ros_env_guard, play_exe, script_env):
    doubles.write_sequence_bag(tmp_path / 'bag', 'mcap', frames=2)
    (tmp_path / 'bag' / 'metadata.yaml').unlink()
    proc = subprocess.run([str(play_exe), str(tmp_path / 'bag'), '--wait-for-subscribers', '0'],
                          env=script_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f'romav2-play: error: {tmp_path / "bag"} is not a rosbag2 '
                                   f'folder: it has no metadata.yaml')


def test_node_outputs_carry_the_bag_stamps(tmp_path, ros_env_guard, play_exe, script_env):
    """Bag -> romav2-play -> romav2_node (sim time, oracle matcher) -> outputs stamped like
    the bag's images: the replay recipe of docs/replay.md, live."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from stereo_msgs.msg import DisparityImage

    from node_harness import reported_subscribers, subscribers_reported

    node_exe = play_exe.parent / 'romav2_node'
    stamps = doubles.write_stereo_bag(tmp_path / 'bag', 'mcap', pairs=5)
    remaps = []
    for topic in doubles.STEREO_TOPICS:  # /stereo/left/image_rect -> /left/image_rect
        remaps += ['-r', f'{topic}:={topic.replace("/stereo", "")}']
    rclpy.init()
    node_proc = play = None
    try:
        node_proc = subprocess.Popen(
            [str(node_exe), '--ros-args', '-p', 'mode:=stereo', '-p', 'use_sim_time:=true',
             '-p', 'model_source:=replay_doubles:oracle', '-p', 'device:=cpu'],
            env=script_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tester = rclpy.create_node('outputs_checker', parameter_overrides=[
            Parameter('use_sim_time', Parameter.Type.BOOL, True)])
        warps, disparities = [], []
        tester.create_subscription(Image, '/romav2_node/warp', warps.append, 10)
        tester.create_subscription(DisparityImage, '/romav2_node/disparity',
                                   disparities.append, 10)
        diagnostics = []
        tester.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 50)
        # The node opens its topics once its model is built; wait until its output publishers
        # have matched ours (it publishes only to listeners; see node_harness).
        assert spin_until(tester, lambda: subscribers_reported(
            diagnostics, ['warp', 'disparity']), 60), reported_subscribers(diagnostics)
        play = subprocess.Popen([str(play_exe), str(tmp_path / 'bag'), '--rate', '0.5',
                                 '--wait-for-subscribers', '30', '--ros-args', *remaps],
                                env=script_env, stderr=subprocess.PIPE, text=True)
        spin_until(tester, lambda: len(warps) == len(stamps) and
                   len(disparities) == len(stamps), 60)
        assert play.wait(30) == 0, play.stderr.read()
        spin_until(tester, lambda: False, 1.0)
        got = [messages.stamp_ns(m.header.stamp) for m in warps]
        # The node may drop a set when busy (drop-oldest queue); what it sends keeps the
        # bag's stamps, in order.
        assert got and got == [s for s in stamps if s in got], (got, stamps)
        assert all(m.header.frame_id == 'left_optical' and m.encoding == '32FC2' for m in warps)
        assert [messages.stamp_ns(m.header.stamp) for m in disparities] == \
            [s for s in stamps if s in got]
    finally:
        for proc in (play, node_proc):
            if proc is not None:
                stop(proc)
        rclpy.try_shutdown()
