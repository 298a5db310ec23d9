"""Several ``romav2_node`` instances from one launch file, one per stereo pair or camera, each
under its own namespace.

    ros2 launch romav2_ros multi_camera.launch.py cameras:=front,rear preset:=desktop_gpu
    ros2 launch romav2_ros multi_camera.launch.py cameras_file:=/path/my_cameras.yaml

``cameras:=a,b`` starts one node per namespace, all in ``mode`` with the same parameters; the
inputs are the node's relative names inside each namespace (``/a/left/image_rect``...), the
outputs ``/a/romav2_node/...``. Otherwise the layout comes from ``cameras_file`` (default: the
shipped example config/multi_camera.yaml), whose entries can set their own mode, parameter
files, parameters and input topics. Each node loads its own model: mind the GPU memory, and
spread nodes over GPUs with ``device: cuda:N`` per entry. docs/launch.md.
"""
import importlib.util
import os

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

#: Keys of one entry of a cameras file (see config/multi_camera.yaml).
ENTRY_KEYS = ('namespace', 'mode', 'params_file', 'preset', 'parameters', 'topics')
CAMERAS_ARGUMENTS = {
    'cameras': ('', 'comma-separated namespaces, one node each (e.g. front,rear), all with '
                    'the same mode and parameters; empty = the entries of cameras_file'),
    'cameras_file': ('multi_camera', 'YAML with a cameras: list (namespace, mode, '
                                     'params_file, preset, parameters, topics per entry); a '
                                     'bare name is config/<name>.yaml'),
}
#: Arguments of romav2_node.launch.py that apply to every camera (topics: per entry).
SHARED_NAMES = ('mode', 'node_name', 'params_file', 'preset', 'use_sim_time', 'rviz',
                'log_level', 'lifecycle', 'setting', 'weights', 'device')


def load_sibling(filename: str):
    """A launch file installed beside this one, as a module."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    spec = importlib.util.spec_from_file_location(filename.split('.')[0] + '_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_entries(cameras: str, cameras_file: str, core) -> list:
    """The camera entries: from the ``cameras`` list, else from the YAML file."""
    if cameras.strip():
        return [{'namespace': name} for name in cameras.replace(',', ' ').split()]
    path = core.config_file(cameras_file)
    with open(path, encoding='utf-8') as f:
        entries = (yaml.safe_load(f) or {}).get('cameras')
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{path}: needs a non-empty "cameras:" list')
    for entry in entries:
        unknown = set(entry) - set(ENTRY_KEYS) if isinstance(entry, dict) else {'?'}
        if unknown or not entry.get('namespace'):
            raise ValueError(f'{path}: entry {entry!r}: needs a namespace; keys are '
                             f'{", ".join(ENTRY_KEYS)}')
    return entries


def launch_setup(context, core):
    def get(name):
        return LaunchConfiguration(name).perform(context)
    shared = {name: get(name) for name in core.PARAMETER_ARGUMENTS}
    actions, seen = [], set()
    for entry in read_entries(get('cameras'), get('cameras_file'), core):
        namespace = str(entry['namespace']).strip('/')
        if namespace in seen:
            raise ValueError(f'camera namespace {namespace!r} given twice')
        seen.add(namespace)
        actions += core.node_actions(
            mode=entry.get('mode', get('mode')), namespace=namespace,
            node_name=get('node_name'),
            params_file=entry.get('params_file', get('params_file')),
            preset=entry.get('preset', get('preset')),
            parameters={**shared, **(entry.get('parameters') or {})},
            topics=entry.get('topics') or {},
            use_sim_time=core.as_bool(get('use_sim_time')), rviz=core.as_bool(get('rviz')),
            log_level=get('log_level'), lifecycle=core.as_bool(get('lifecycle')))
    return actions


def generate_launch_description():
    core = load_sibling('romav2_node.launch.py')
    arguments = [DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, (default, text) in CAMERAS_ARGUMENTS.items()]
    arguments += [a for a in core.declare_arguments() if a.name in SHARED_NAMES]
    return LaunchDescription(arguments + [
        OpaqueFunction(function=launch_setup, kwargs={'core': core})])
