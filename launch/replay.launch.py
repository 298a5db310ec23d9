"""A rosbag2 bag into ``romav2_node`` on simulated time, the outputs recorded.

    ros2 launch romav2_ros replay.launch.py bag:=robot_stereo record:=out/robot_romav2 \
        left_image:=/stereo/left/image_rect left_info:=/stereo/left/camera_info \
        right_image:=/stereo/right/image_rect right_info:=/stereo/right/camera_info

The node starts first (``use_sim_time`` defaults to true here); the player starts when the node
logs that it is ready (the model is built and subscribed), so no frame is lost to start-up.
``player:=ros2`` plays with ``ros2 bag play --clock``; ``player:=romav2`` with the package's
``romav2-play`` (publishes /clock too; no rosbag2 needed). With ``record:=FOLDER``,
``ros2 bag record`` writes the node's outputs and /diagnostics there. When the bag ends, the
launch waits ``linger`` seconds for the last frames, then shuts everything down (the recorder
closes its bag). Without a ROS graph at all, ``romav2-replay IN OUT`` does the same offline
(docs/replay.md). Other arguments: romav2_node.launch.py; docs/launch.md.
"""
import importlib.util
import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction,
                            RegisterEventHandler, TimerAction)
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

#: What the node logs once its topics are open (romav2_ros/node.py ``start``).
READY_TEXT = b'ready: mode='
PLAYERS = ('ros2', 'romav2')

REPLAY_ARGUMENTS = {
    'bag': (None, 'input rosbag2 folder (mcap or sqlite3); required'),
    'player': ('ros2', 'ros2: ros2 bag play --clock; romav2: the package\'s romav2-play '
                       '(publishes /clock; works without rosbag2)'),
    'rate': ('1.0', 'playback speed factor (0.5 = half speed: fewer frames dropped by a slow '
                    'model)'),
    'record': ('', 'output bag folder for ros2 bag record (must not exist); empty = no '
                   'recording'),
    'linger': ('5.0', 'seconds to keep running after the bag ends, for the last frames'),
}


def load_sibling(filename: str):
    """A launch file installed beside this one, as a module."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    spec = importlib.util.spec_from_file_location(filename.split('.')[0] + '_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def player_action(player: str, bag: str, rate: str):
    if player == 'ros2':
        return ExecuteProcess(cmd=['ros2', 'bag', 'play', bag, '--rate', rate, '--clock', '100'],
                              name='bag_play', output='screen')
    if player == 'romav2':
        return Node(package='romav2_ros', executable='romav2-play', name='romav2_player',
                    arguments=[bag, '--rate', rate], output='screen')
    raise ValueError(f'player:={player}: one of {", ".join(PLAYERS)}')


def recorder_action(folder: str, namespace: str, node_name: str):
    prefix = '/' + '/'.join(part for part in (namespace.strip('/'), node_name) if part)
    return ExecuteProcess(cmd=['ros2', 'bag', 'record', '-o', folder,
                               '--regex', f'^({prefix}/[^/]+|/diagnostics|/tf)$'],
                          name='bag_record', output='screen')


def launch_setup(context, core):
    def get(name):
        return LaunchConfiguration(name).perform(context)
    actions = core.launch_setup(context)
    node = actions[0]
    player = player_action(get('player'), get('bag'), get('rate'))
    started = []

    def on_output(event):
        if not started and READY_TEXT in event.text:
            started.append(True)
            return [player]
        return None

    actions += [
        RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=on_output,
                                         on_stderr=on_output)),
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=[
            EmitEvent(event=Shutdown(reason='romav2_node exited'))])),
        RegisterEventHandler(OnProcessExit(target_action=player, on_exit=[
            TimerAction(period=float(get('linger')), actions=[
                EmitEvent(event=Shutdown(reason='bag finished'))])])),
    ]
    if get('record'):
        actions.insert(0, recorder_action(get('record'), get('namespace'), get('node_name')))
    return actions


def generate_launch_description():
    core = load_sibling('romav2_node.launch.py')
    arguments = [DeclareLaunchArgument(name, description=text) if default is None else
                 DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, (default, text) in REPLAY_ARGUMENTS.items()]
    return LaunchDescription(
        arguments + core.declare_arguments(overrides={'use_sim_time': 'true'}) +
        [OpaqueFunction(function=launch_setup, kwargs={'core': core})])
