"""One ``romav2_node``, any mode: the launch core the other launch files build on.

    ros2 launch romav2_ros romav2_node.launch.py mode:=sequential image:=/camera/image_raw \
        camera_info:=/camera/camera_info preset:=embedded_gpu

``stereo.launch.py`` and ``sequential.launch.py`` are this file with the mode fixed (and only
that mode's topic arguments); ``replay.launch.py`` adds a bag player and a recorder;
``multi_camera.launch.py`` starts several nodes with :func:`node_actions`. The other files load
this one by path (it is installed beside them), so everything here is plain functions and
tables. All arguments: ``ros2 launch romav2_ros romav2_node.launch.py --show-args``;
docs/launch.md.

Parameters reach the node in this order (later wins): ``params_file`` (default: the mode's
``config/<mode>.yaml``), ``preset`` (``config/<preset>.yaml``), ``mode`` and ``use_sim_time``,
then ``setting`` / ``weights`` / ``device`` when given (non-empty).
"""
import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'romav2_ros'
EXECUTABLE = 'romav2_node'
#: ``lifecycle:=true``: the managed node (same code and topics), brought up by itself.
LIFECYCLE_EXECUTABLE = 'romav2_lifecycle_node'

#: Per mode: launch argument -> (node input topic it remaps, description). The default of each
#: argument is the node's own name (relative: it resolves inside ``namespace``). Image inputs
#: are remapped together with their ``/compressed`` topic (``input_transport:=compressed``).
STEREO_TOPIC_ARGUMENTS = {
    'left_image': ('left/image_rect', 'rectified left image, image A (sensor_msgs/Image)'),
    'left_info': ('left/camera_info', 'camera_info of the left image'),
    'right_image': ('right/image_rect', 'rectified right image, image B; same size as left'),
    'right_info': ('right/camera_info', 'camera_info of the right image (P gives the '
                                        'disparity\'s f and baseline)'),
}
TOPIC_ARGUMENTS = {
    'stereo': STEREO_TOPIC_ARGUMENTS,
    'stereo_odometry': STEREO_TOPIC_ARGUMENTS,
    'sequential': {
        'image': ('image', 'the camera stream; frame t is matched to frame t-1 (set '
                           'rectified: false in the params file for image_raw)'),
        'camera_info': ('camera_info', 'camera_info of the stream'),
    },
}
IMAGE_ARGUMENTS = ('left_image', 'right_image', 'image')

#: Launch arguments set as the node parameter of the same name when not empty (empty: the
#: parameter files decide, then the node's default).
PARAMETER_ARGUMENTS = {
    'setting': 'RoMa v2 preset: turbo (320 px), fast (512), base (640), precise (800 + 1280 '
               'refinement), mega1500; empty = the parameter files\' (node default precise)',
    'weights': 'path of romav2.0.1.pt; empty = the parameter files\' or the torch hub cache '
               '~/.cache/torch/hub/checkpoints/romav2.0.1.pt',
    'device': 'auto, cpu, cuda or cuda:N; empty = the parameter files\' (node default auto)',
}

#: Hardware presets shipped in config/ (``preset:=<name>``).
PRESETS = ('desktop_gpu', 'embedded_gpu')

#: Launch argument -> (default, description), shared by every launch file of the package.
COMMON_ARGUMENTS = {
    'namespace': ('', 'namespace of the node and of its relative input topics (e.g. front: '
                      'inputs /front/left/image_rect..., outputs /front/romav2_node/...)'),
    'node_name': ('romav2_node', 'node name; the outputs are <namespace>/<node_name>/<output>'),
    'params_file': ('', 'parameter YAML loaded first; empty = the mode\'s config/<mode>.yaml'),
    'preset': ('', 'hardware preset loaded after params_file: desktop_gpu, embedded_gpu '
                   '(config/<preset>.yaml) or a YAML path; empty = none'),
    'use_sim_time': ('false', 'true: the node (and rviz2) follow /clock, for bags and '
                              'simulators; outputs always carry the input stamps'),
    'rviz': ('false', 'true: also open rviz2 with the shipped rviz/romav2.rviz, its topics '
                      'rewritten to this node\'s namespace and name'),
    'log_level': ('info', 'node log level: debug, info, warn, error, fatal'),
    'lifecycle': ('false', 'true: run the managed node (romav2_lifecycle_node, the Nav2 / '
                           'Isaac ROS convention) and let it configure and activate itself '
                           '(autostart); false: the plain node'),
}
MODE_ARGUMENT = ('stereo', 'stereo (left -> right), sequential (frame t -> t-1) or '
                           'stereo_odometry (metric odometry of the left camera)')


def share_file(*parts: str) -> str:
    """A file installed in the package's share folder (setup.py data_files)."""
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def config_file(value: str) -> str:
    """``value`` as a parameter file: a path as is, a bare name as ``config/<name>.yaml``."""
    if os.sep in value or value.endswith(('.yaml', '.yml')):
        return os.path.expanduser(value)
    return share_file('config', value + '.yaml')


def as_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value not in ('true', 'false', '1', '0', 'yes', 'no', 'on', 'off'):
        raise ValueError(f'{text!r} is not a boolean (true or false)')
    return value in ('true', '1', 'yes', 'on')


def declare_arguments(mode=None, overrides=None) -> list:
    """``DeclareLaunchArgument`` for every knob: the common ones, ``mode`` when it is not fixed,
    and the topic arguments of ``mode`` (of both modes when not fixed). ``overrides`` changes
    defaults (e.g. ``{'use_sim_time': 'true'}``)."""
    table = dict(COMMON_ARGUMENTS)
    table.update({name: ('', text) for name, text in PARAMETER_ARGUMENTS.items()})
    if mode is None:
        table['mode'] = MODE_ARGUMENT
    for each in ([mode] if mode else TOPIC_ARGUMENTS):
        for name, (topic, text) in TOPIC_ARGUMENTS[each].items():
            table[name] = (topic, f'{text}; remaps the node\'s {topic}')
    for name, default in (overrides or {}).items():
        table[name] = (default, table[name][1])
    return [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in table.items()]


def remappings(mode: str, topics: dict) -> list:
    """(node topic, target) pairs for the topic arguments that differ from the node's names."""
    pairs = []
    for name, (topic, _text) in TOPIC_ARGUMENTS[mode].items():
        target = topics.get(name, topic)
        if target and target != topic:
            pairs.append((topic, target))
            if name in IMAGE_ARGUMENTS:
                pairs.append((topic + '/compressed', target + '/compressed'))
    return pairs


def rviz_config(namespace: str, node_name: str) -> str:
    """The shipped rviz config, rewritten to ``/<namespace>/<node_name>/...`` when they differ
    from the ``/romav2_node/...`` it shows (a copy in the temp folder)."""
    path = share_file('rviz', 'romav2.rviz')
    prefix = '/'.join(part for part in (namespace.strip('/'), node_name) if part)
    if prefix == EXECUTABLE:
        return path
    with open(path, encoding='utf-8') as f:
        text = f.read().replace(f'/{EXECUTABLE}/', f'/{prefix}/')
    out = os.path.join(tempfile.gettempdir(), f'romav2_{prefix.replace("/", "_")}.rviz')
    with open(out, 'w', encoding='utf-8') as f:
        f.write(text)
    return out


def node_actions(*, mode: str, namespace: str = '', node_name: str = EXECUTABLE,
                 params_file: str = '', preset: str = '', parameters=None, topics=None,
                 use_sim_time: bool = False, rviz: bool = False, log_level: str = 'info',
                 lifecycle: bool = False):
    """The node (and rviz2 when asked) for one camera or stereo pair."""
    if mode not in TOPIC_ARGUMENTS:
        raise ValueError(f'mode={mode!r}: one of {", ".join(TOPIC_ARGUMENTS)}')
    files = [config_file(params_file or mode)] + ([config_file(preset)] if preset else [])
    overrides = {k: v for k, v in (parameters or {}).items() if v != ''}
    if lifecycle:
        overrides['autostart'] = True
    executable = LIFECYCLE_EXECUTABLE if lifecycle else EXECUTABLE
    actions = [Node(
        package=PACKAGE, executable=executable, name=node_name, namespace=namespace,
        parameters=[*files, {'mode': mode, 'use_sim_time': use_sim_time}, overrides],
        remappings=remappings(mode, topics or {}),
        ros_arguments=['--log-level', log_level],
        output='screen', emulate_tty=True)]
    if rviz:
        actions.append(Node(
            package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
            arguments=['-d', rviz_config(namespace, node_name)],
            parameters=[{'use_sim_time': use_sim_time}], output='log'))
    return actions


def launch_setup(context, mode=None):
    """OpaqueFunction body: the node of the declared arguments (``mode`` fixed or read)."""
    def get(name):
        return LaunchConfiguration(name).perform(context)
    mode = mode or get('mode')
    if mode not in TOPIC_ARGUMENTS:
        raise ValueError(f'mode:={mode}: one of {", ".join(TOPIC_ARGUMENTS)}')
    return node_actions(
        mode=mode, namespace=get('namespace'), node_name=get('node_name'),
        params_file=get('params_file'), preset=get('preset'),
        parameters={name: get(name) for name in PARAMETER_ARGUMENTS},
        topics={name: get(name) for name in TOPIC_ARGUMENTS[mode]},
        use_sim_time=as_bool(get('use_sim_time')), rviz=as_bool(get('rviz')),
        log_level=get('log_level'), lifecycle=as_bool(get('lifecycle')))


def describe(mode=None, overrides=None) -> LaunchDescription:
    """The launch description of one node (``mode`` fixed, or a ``mode`` argument)."""
    return LaunchDescription(declare_arguments(mode, overrides) + [
        OpaqueFunction(function=launch_setup, kwargs={'mode': mode})])


def generate_launch_description():
    return describe()
