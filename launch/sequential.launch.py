"""RoMa v2 on one camera stream (frame t -> t-1): one ``romav2_node`` with ``mode:=sequential``.

    ros2 launch romav2_ros sequential.launch.py preset:=embedded_gpu rviz:=true \
        image:=/camera/image_rect camera_info:=/camera/camera_info

Arguments (``--show-args``) and the parameter order are those of romav2_node.launch.py,
without ``mode`` and the stereo topics; docs/launch.md.
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
    return load_sibling('romav2_node.launch.py').describe(mode='sequential')
