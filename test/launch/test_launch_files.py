"""The launch files: checked statically everywhere (no ``launch``/``launch_ros`` here), and
generated and expanded for real where ``launch_ros`` imports (a ROS 2 install).

Static checks read the files with ``ast``: they parse; every launch argument has a
description; every parameter they give the node is declared in ``romav2_ros.params.PARAMS``;
every topic they remap is one the node subscribes (``romav2_ros.node.INPUT_TOPICS``, plus
``/compressed`` for images) or publishes (``~/<output>``, ``romav2_ros.pipeline.OUTPUTS``);
every file they use (sibling launch files, config, rviz) exists and is installed by
CMakeLists.txt (test/packaging/test_colcon_workspace.py checks a real install).
"""
from __future__ import annotations

import ast
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from romav2_ros import params
from romav2_ros.node import INPUT_TOPICS
from romav2_ros.pipeline import OUTPUTS, mode_outputs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = 'romav2_ros'
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
REQUIRED = ('stereo.launch.py', 'sequential.launch.py', 'stereo_odometry.launch.py',
            'replay.launch.py', 'multi_camera.launch.py')
CORE = 'romav2_node.launch.py'
BUILTIN_PARAMETERS = {'use_sim_time'}


def node_topics(mode: str) -> set[str]:
    """Names the node uses in ``mode``, as written in node.py (relative or ``~/``)."""
    inputs = set(INPUT_TOPICS[mode])
    inputs |= {t + '/compressed' for t in INPUT_TOPICS[mode] if not t.endswith('camera_info')}
    outputs = {'~/' + key for key in mode_outputs(mode)}
    return inputs | outputs


def installed_files() -> dict[str, str]:
    """Repository path -> install folder, from CMakeLists.txt's share/ install rule."""
    rule = re.search(r'install\(DIRECTORY ([\w ]+) DESTINATION share/\$\{PROJECT_NAME\}\)',
                     (ROOT / 'CMakeLists.txt').read_text())
    assert rule, 'CMakeLists.txt installs no folder into share/${PROJECT_NAME}'
    return {str(path.relative_to(ROOT)): f'share/{PACKAGE}/{folder}'
            for folder in rule.group(1).split() for path in (ROOT / folder).glob('*')
            if path.is_file()}


def _table(node: ast.AST, tables: dict):
    """A module-level literal table; names of earlier tables may appear inside it."""
    if isinstance(node, ast.Name):
        if node.id not in tables:
            raise ValueError(node.id)
        return tables[node.id]
    if isinstance(node, ast.Dict):
        return {_table(k, tables): _table(v, tables) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_table(e, tables) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    return ast.literal_eval(node)


class LaunchFile:
    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text()
        self.tree = ast.parse(self.text, filename=str(path))
        self.tables = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                try:
                    self.tables[node.targets[0].id] = _table(node.value, self.tables)
                except ValueError:
                    pass

    def calls(self, name: str):
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                func = node.func
                if getattr(func, 'id', None) == name or getattr(func, 'attr', None) == name:
                    yield node

    def constant_calls(self, name: str):
        """Argument tuples of the calls of ``name`` whose arguments are all string literals."""
        for call in self.calls(name):
            if call.args and all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                 for a in call.args):
                yield tuple(a.value for a in call.args)

    def keyword(self, call: ast.Call, name: str):
        return next((k.value for k in call.keywords if k.arg == name), None)

    def node_calls(self):
        """The ``Node(...)`` calls that start romav2_node."""
        for call in self.calls('Node'):
            package = self.keyword(call, 'package')
            executable = self.keyword(call, 'executable')
            # EXECUTABLE, or the variable choosing it or LIFECYCLE_EXECUTABLE (lifecycle:=true)
            if getattr(executable, 'id', None) in ('EXECUTABLE', 'executable') or \
                    getattr(executable, 'value', None) == 'romav2_node':
                assert getattr(package, 'id', None) == 'PACKAGE' or \
                    getattr(package, 'value', None) == PACKAGE
                yield call


@pytest.fixture(scope='module')
def files():
    return {p.name: LaunchFile(p) for p in LAUNCH_FILES}


@pytest.fixture(scope='module')
def core(files):
    return files[CORE]


def test_required_launch_files_exist_and_parse(files):
    missing = [name for name in REQUIRED + (CORE,) if name not in files]
    assert not missing, f'missing launch files: {missing}'
    for launch_file in files.values():
        compile(launch_file.text, str(launch_file.path), 'exec')
        functions = {n.name for n in launch_file.tree.body if isinstance(n, ast.FunctionDef)}
        assert 'generate_launch_description' in functions, launch_file.path.name


def test_every_launch_argument_has_a_description(files):
    for name, launch_file in files.items():
        for call in launch_file.calls('DeclareLaunchArgument'):
            assert launch_file.keyword(call, 'description') is not None, \
                f'{name}:{call.lineno}: DeclareLaunchArgument without description='
        # The argument tables: name -> (default, description) or name -> description.
        for table_name, table in launch_file.tables.items():
            if not table_name.endswith(('_ARGUMENTS', '_ARGUMENT')) or \
                    (isinstance(table, tuple) and table_name != 'MODE_ARGUMENT'):
                continue  # e.g. IMAGE_ARGUMENTS: a list of names
            rows = {'mode': table} if isinstance(table, tuple) else table
            for arg, row in rows.items():
                if table_name == 'TOPIC_ARGUMENTS':
                    for topic_arg, (_topic, text) in row.items():
                        assert text.strip(), f'{name}: {topic_arg} has no description'
                    continue
                text = row if isinstance(row, str) else row[-1]
                assert isinstance(text, str) and len(text.strip()) > 10, \
                    f'{name}: argument {arg} has no real description'


def test_the_knobs_of_the_issue_are_launch_arguments(core, files):
    declared = set(core.tables['COMMON_ARGUMENTS']) | set(core.tables['PARAMETER_ARGUMENTS'])
    for knob in ('namespace', 'setting', 'weights', 'device', 'params_file', 'use_sim_time',
                 'rviz', 'lifecycle'):
        assert knob in declared, knob
    # lifecycle:=true runs the managed executable, which brings itself up (autostart)
    assert core.tables['LIFECYCLE_EXECUTABLE'] == 'romav2_lifecycle_node'
    assert "overrides['autostart'] = True" in core.text
    assert 'autostart' in params.BY_NAME
    assert set(files['replay.launch.py'].tables['REPLAY_ARGUMENTS']) >= {'bag', 'record'}
    assert set(files['multi_camera.launch.py'].tables['CAMERAS_ARGUMENTS']) == \
        {'cameras', 'cameras_file'}


def test_parameters_given_to_the_node_are_declared(files):
    found = 0
    for name, launch_file in files.items():
        passed = set(launch_file.tables.get('PARAMETER_ARGUMENTS', {}))
        for call in launch_file.node_calls():
            value = launch_file.keyword(call, 'parameters')
            for node in ast.walk(value) if value is not None else ():
                if isinstance(node, ast.Dict):
                    passed |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
        unknown = passed - set(params.BY_NAME) - BUILTIN_PARAMETERS
        assert not unknown, f'{name} passes undeclared node parameters {sorted(unknown)}'
        found += len(passed)
    assert found, 'no parameter found: the launch files changed shape, update this test'


def test_remapped_topics_are_node_topics(files, core):
    table = core.tables['TOPIC_ARGUMENTS']
    assert set(table) == set(INPUT_TOPICS), 'one topic table per node mode'
    for mode, rows in table.items():
        topics = {topic for topic, _text in rows.values()}
        # every input of the mode can be remapped, and nothing else
        assert topics == set(INPUT_TOPICS[mode]), mode
        for arg in core.tables['IMAGE_ARGUMENTS']:
            if arg in rows:
                assert rows[arg][0] + '/compressed' in node_topics(mode)
    every_topic = set().union(*(node_topics(mode) for mode in INPUT_TOPICS))
    for name, launch_file in files.items():
        for call in launch_file.node_calls():
            value = launch_file.keyword(call, 'remappings')
            if isinstance(value, (ast.List, ast.Tuple)):
                for pair in value.elts:
                    source = ast.literal_eval(pair.elts[0])
                    assert source in every_topic, f'{name} remaps {source!r}'


def test_topic_arguments_default_to_the_node_names(core):
    """Without remap arguments the node keeps its own (namespace-relative) names."""
    for rows in core.tables['TOPIC_ARGUMENTS'].values():
        for _arg, (topic, _text) in rows.items():
            assert not topic.startswith('/'), topic


def test_referenced_files_exist_and_are_installed(files, core):
    installed = installed_files()
    referenced = set()
    for name, launch_file in files.items():
        referenced |= {'/'.join(parts) for parts in launch_file.constant_calls('share_file')}
        referenced |= {'launch/' + parts[0] for parts in launch_file.constant_calls(
            'load_sibling')}
    assert 'rviz/romav2.rviz' in referenced
    referenced |= {f'config/{mode}.yaml' for mode in core.tables['TOPIC_ARGUMENTS']}
    referenced |= {f'config/{preset}.yaml' for preset in core.tables['PRESETS']}
    cameras_default = files['multi_camera.launch.py'].tables['CAMERAS_ARGUMENTS'][
        'cameras_file'][0]
    referenced.add(f'config/{cameras_default}.yaml')
    referenced.add('config/fastdds_large_images.xml')  # docs/launch.md
    for path in sorted(referenced):
        assert (ROOT / path).is_file(), f'{path} is referenced but missing'
        folder = path.split('/')[0]
        assert installed.get(path) == f'share/{PACKAGE}/{folder}', \
            f'{path} is not installed by CMakeLists.txt'
    for launch_file in LAUNCH_FILES:
        assert installed.get(f'launch/{launch_file.name}') == f'share/{PACKAGE}/launch'


def test_rviz_config_shows_the_default_node_topics():
    """rviz_config() rewrites '/romav2_node/' for other namespaces: the file must use it."""
    text = (ROOT / 'rviz' / 'romav2.rviz').read_text()
    topics = [line.split(':', 1)[1].strip() for line in text.splitlines()
              if line.strip().startswith('Value: /')]
    assert topics
    for topic in topics:
        assert topic.startswith('/romav2_node/') and topic.split('/')[-1] in OUTPUTS, topic


def test_replay_waits_for_the_node_ready_line(files):
    """The player starts on the node's 'ready: mode=' log line (node.py start())."""
    ready = files['replay.launch.py'].tables['READY_TEXT'].decode()
    node_py = (ROOT / 'romav2_ros' / 'node.py').read_text()
    assert "f'" + ready in node_py or ready in node_py


# ---------------------------------------------------------------- with launch_ros (real ROS)

@pytest.fixture
def ros_launch(tmp_path, monkeypatch):
    """launch + launch_ros, and an ament prefix whose share/romav2_ros is this repository."""
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ROS 2 install '
                                             'here); the static checks above still ran')
    import launch
    prefix = tmp_path / 'prefix'
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    (index / PACKAGE).write_text('')
    (prefix / 'share' / PACKAGE).symlink_to(ROOT)
    monkeypatch.setenv('AMENT_PREFIX_PATH', os.pathsep.join(
        filter(None, [str(prefix), os.environ.get('AMENT_PREFIX_PATH')])))
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # rviz copies, parameter files
    return launch


def expand(launch, path: Path, arguments: dict):
    """Generate the LaunchDescription, apply ``arguments`` and the defaults, run the
    OpaqueFunctions, and return (description, actions they produced, context)."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    description = get_launch_description_from_python_launch_file(str(path))
    context = launch.LaunchContext()
    context.launch_configurations.update(arguments)
    produced = []
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
        elif isinstance(entity, OpaqueFunction):
            produced += entity.visit(context) or []
    return description, produced, context


def romav2_nodes(actions):
    from launch_ros.actions import Node
    return [a for a in actions if isinstance(a, Node) and a.node_executable == 'romav2_node']


def node_parameters(node, context) -> dict:
    """The parameters the node would start with, merged in the order launch gives them."""
    node._perform_substitutions(context)
    merged = {}
    # (path, is_file) pairs; launch_ros has no public accessor (Jazzy: name-mangled attribute)
    for path, is_file in node._Node__expanded_parameter_arguments:
        assert is_file, path
        with open(path, encoding='utf-8') as f:
            for section in (yaml.safe_load(f) or {}).values():
                merged.update(section['ros__parameters'])
    return merged


@pytest.mark.parametrize('name', REQUIRED + (CORE,))
def test_launch_description_generates(ros_launch, name):
    args = {'bag': '/tmp/in_bag'} if name == 'replay.launch.py' else {}
    description, produced, context = expand(ros_launch, ROOT / 'launch' / name, args)
    for argument in description.get_launch_arguments():
        assert argument.description and argument.description != 'no description given', \
            f'{name}: {argument.name}'
    nodes = romav2_nodes(produced)
    assert nodes, name
    for node in nodes:
        values = node_parameters(node, context)
        for key, value in values.items():
            assert key in params.BY_NAME or key in BUILTIN_PARAMETERS, f'{name}: {key}'
            assert params.check(key, value) is None, params.check(key, value)
        for source, _target in node.expanded_remapping_rules or []:
            assert source in node_topics(values['mode']), f'{name}: remaps {source}'


def test_stereo_launch_arguments_reach_the_node(ros_launch):
    _d, produced, context = expand(ros_launch, ROOT / 'launch' / 'stereo.launch.py', {
        'namespace': 'front', 'left_image': '/cam/left/image_rect_color', 'setting': 'turbo',
        'preset': 'embedded_gpu', 'device': 'cpu', 'use_sim_time': 'true', 'rviz': 'true'})
    (node,) = romav2_nodes(produced)
    values = node_parameters(node, context)
    assert values['mode'] == 'stereo' and values['setting'] == 'turbo'
    assert values['device'] == 'cpu' and values['use_sim_time'] is True
    assert values['precision'] == 'bf16' and values['viz_rate'] == 1.0   # the preset's
    assert dict(node.expanded_remapping_rules) == {
        'left/image_rect': '/cam/left/image_rect_color',
        'left/image_rect/compressed': '/cam/left/image_rect_color/compressed'}
    rviz = [a for a in produced if getattr(a, 'node_executable', None) == 'rviz2']
    assert len(rviz) == 1


def test_multi_camera_one_node_per_namespace(ros_launch):
    _d, produced, context = expand(ros_launch, ROOT / 'launch' / 'multi_camera.launch.py',
                                   {'cameras': 'front,rear'})
    nodes = romav2_nodes(produced)
    assert len(nodes) == 2
    for node in nodes:
        node._perform_substitutions(context)
    assert sorted(n.expanded_node_namespace for n in nodes) == ['/front', '/rear']
    # the shipped layout file
    _d, produced, context = expand(ros_launch, ROOT / 'launch' / 'multi_camera.launch.py', {})
    layout = yaml.safe_load((ROOT / 'config' / 'multi_camera.yaml').read_text())['cameras']
    assert len(romav2_nodes(produced)) == len(layout)
