"""Fixtures of the rclpy tests: a private rclpy context, a tester node (``node_harness.Tester``) and tf2_msgs for the
processes that need it (built once a session where the ROS install that has it is missing)."""
import json
import os

import pytest

import tf2_msgs_build
from node_harness import Tester, profile_env

# Fast DDS reads its profiles file once per process, when the first participant is created:
# set it before any test here creates one (a private ``context`` before the first Tester left
# the test process on the default transports, which lose the 1 MB best-effort images).
os.environ.update(profile_env())


@pytest.fixture
def context():
    """An rclpy context of its own (its own DDS participant), shut down after the test."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


@pytest.fixture
def tester():
    t = Tester()
    yield t
    t.close()


@pytest.fixture(scope='session')
def tf2_env(tmp_path_factory):
    """The path entries a process needs to import tf2_msgs (empty on a ROS install); our build
    must be the real message, to the hash rosbags' Jazzy typestore knows."""
    env = tf2_msgs_build.build(tmp_path_factory.mktemp('tf2_msgs'))
    if env:
        from rosbags.typesys import Stores, get_typestore
        with open(os.path.join(env['TF2_MSGS_SHARE'], 'msg', 'TFMessage.json')) as f:
            built = json.load(f)
        assert built['type_hashes'][0]['hash_string'] == \
            get_typestore(Stores.ROS2_JAZZY).hash_rihs01('tf2_msgs/msg/TFMessage')
    return env
