"""``tf2_msgs/TFMessage`` for the tests, where the ROS install that has it is missing.

The PyPI ROS wheels ship no tf2_msgs. Its one message is ``geometry_msgs/TransformStamped[]
transforms``; built from that definition (:mod:`msg_package_build`), it is the same type on the
wire: the test checks its RIHS01 hash against the one rosbags' Jazzy typestore knows for the
real ``tf2_msgs/msg/TFMessage``. On a ROS install the real package is used instead.
"""
from __future__ import annotations

from pathlib import Path

import msg_package_build

TF_MESSAGE = 'geometry_msgs/TransformStamped[] transforms\n'


def build(root: Path) -> dict:
    """Build into ``root/install``; the path entries a process needs to import it (to
    prepend to PYTHONPATH, LD_LIBRARY_PATH, AMENT_PREFIX_PATH), and TF2_MSGS_SHARE; empty
    when tf2_msgs imports already."""
    return msg_package_build.build(root, 'tf2_msgs', {'TFMessage': TF_MESSAGE},
                                   ('geometry_msgs',))
