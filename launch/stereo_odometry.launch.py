"""Metric stereo visual odometry: one ``romav2_node`` with ``mode:=stereo_odometry``.

    ros2 launch romav2_ros stereo_odometry.launch.py namespace:=front preset:=desktop_gpu \
        left_image:=/front/left/image_rect right_image:=/front/right/image_rect lifecycle:=true

The stereo inputs of stereo.launch.py; outputs add ``~/odometry`` (and ``odom -> left camera``
on /tf with ``publish_tf: true`` in the params file). Arguments (``--show-args``) and the
parameter order are those of romav2_node.launch.py; docs/launch.md.
"""
import importlib.util
import os


def load_sibling(filename: str):
    """A launch file installed beside this one, as a module."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    spec = importlib.util.spec_from_file_location(filename.split('.')[0] + '_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_launch_description():
    return load_sibling('romav2_node.launch.py').describe(mode='stereo_odometry')
