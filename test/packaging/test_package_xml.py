"""package.xml declares exactly what the tree uses, each key with the right tag.

What is used is read from the sources, not listed by hand: every ``import`` (``ast``) of the
installed packages and launch files (run time), of the tests and the tools they run (test
time); every ``Node(package=...)`` and ``ros2 <verb>`` command of the launch files; every
``find_package`` and message dependency of CMakeLists.txt (build time). A module maps to a
rosdep key through :data:`ROSDEP_KEYS` (or is a ROS package of the same name, for ``*_msgs``
and :data:`ROS_PACKAGES`), or is explicitly pip-installed (:data:`PIP_ONLY`); a new import
that is none of these fails the test until it is classified.
"""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Folders by the time their imports are needed. Run time: what colcon installs.
RUN_FOLDERS = ('romav2_ros', 'romav2_core', 'cuda_ext', 'launch')
TEST_FOLDERS = ('test', 'bench', 'eval', 'scripts')  # the tests run bench/, eval/, scripts/
#: This package's own import names (cuda_ext/ is installed as romav2_cuda_ext).
OWN = {'romav2_ros', 'romav2_core', 'romav2_cuda_ext'}

#: Python module -> rosdep key (rosdistro rosdep/python.yaml; checked by hand, see the report
#: in docs/workspace.md). Only modules the tree imports belong here.
ROSDEP_KEYS = {
    'numpy': 'python3-numpy',
    'cv2': 'python3-opencv',
    'yaml': 'python3-yaml',
    'pytest': 'python3-pytest',
    'hypothesis': 'python3-hypothesis',
    'psutil': 'python3-psutil',
    'skimage': 'python3-skimage',
    'matplotlib': 'python3-matplotlib',
    'scipy': 'python3-scipy',
}
#: ROS packages imported under their own name (``*_msgs`` count as such too).
ROS_PACKAGES = {'rclpy', 'launch', 'launch_ros', 'ament_index_python', 'builtin_interfaces',
                'rcl_interfaces', 'bond'}
#: Imported but deliberately not rosdep keys: pip-installed, with where that is documented.
PIP_ONLY = {
    'torch': 'docs/workspace.md "PyTorch on a ROS machine" (CUDA / Jetson wheels; rosdep '
             'python3-torch would be a CPU-only Ubuntu build)',
    'rosbags': 'docs/workspace.md, requirements/base.txt (rosdep python3-rosbags-pip installs '
               'with the system pip, which Ubuntu 24.04 refuses: PEP 668)',
    'romav2': 'test oracle, the official model: scripts/setup_env.sh (pip --no-deps)',
    'transformers': 'test oracle: requirements/test-oracles.txt',
    'poselib': 'eval/ reference solver: requirements/base.txt',
    'ray': 'the optional fleet tool (Ray): docs/workspace.md',
    'evo': 'test scorer of trajectories: requirements/test-oracles.txt',
}
#: ``ros2 <verb>`` commands in launch files -> the keys that provide them. The project's bags
#: are mcap (rosbag2's Jazzy default), whose storage plugin is a package of its own.
CLI_KEYS = {'bag': ('ros2bag', 'rosbag2_storage_mcap')}
#: What generated message code needs at run time (CMakeLists.txt's rosidl_generate_interfaces).
MESSAGE_RUNTIME = 'rosidl_default_runtime'
#: rosidl_generate_interfaces makes the package a member of this group (REP 149).
INTERFACE_GROUP = 'rosidl_interface_packages'

BUILD_TAGS = ('buildtool_depend', 'build_depend', 'depend')
RUN_TAGS = ('exec_depend', 'depend')
TEST_TAGS = ('test_depend',) + RUN_TAGS


def declared() -> dict[str, set[str]]:
    """Tag -> keys of package.xml."""
    root = ET.parse(ROOT / 'package.xml').getroot()
    tags: dict[str, set[str]] = {}
    for element in root:
        tags.setdefault(element.tag, set()).add((element.text or '').strip())
    return tags


def python_files(folders) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob('*.py')
                  if '__pycache__' not in p.parts and (folder != 'romav2_ros' or
                                                       'msg' not in p.parts))


def local_modules() -> set[str]:
    """Helper modules the tests and tools import by file name (pytest.ini pythonpath, etc.)."""
    return {p.stem for p in python_files(TEST_FOLDERS)}


def imported_modules(files) -> dict[str, list[str]]:
    """Top-level module -> the files importing it (absolute imports only)."""
    found: dict[str, list[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split('.')[0], []).append(str(path.relative_to(ROOT)))
    return found


def module_keys(files) -> tuple[dict[str, list[str]], list[str]]:
    """rosdep key -> files needing it, and the imports nobody classified."""
    skip = set(sys.stdlib_module_names) | OWN | local_modules() | set(PIP_ONLY)
    keys: dict[str, list[str]] = {}
    unknown = []
    for module, where in imported_modules(files).items():
        if module in skip:
            continue
        key = ROSDEP_KEYS.get(module) or (
            module if module in ROS_PACKAGES or module.endswith('_msgs') else None)
        if key is None:
            unknown.append(f'{module} (imported by {", ".join(sorted(set(where)))})')
        else:
            keys.setdefault(key, []).extend(where)
    return keys, unknown


def launch_keys() -> dict[str, list[str]]:
    """Keys the launch files start: ``Node(package=...)`` and ``ros2 <verb>`` commands."""
    keys: dict[str, list[str]] = {}
    for path in sorted((ROOT / 'launch').glob('*.launch.py')):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == 'package' and isinstance(kw.value, ast.Constant):
                    keys.setdefault(kw.value.value, []).append(where)
                if kw.arg == 'cmd' and isinstance(kw.value, ast.List):
                    words = [e.value for e in kw.value.elts if isinstance(e, ast.Constant)]
                    if words[:1] == ['ros2']:
                        for key in CLI_KEYS[words[1]]:
                            keys.setdefault(key, []).append(where)
    keys.pop('romav2_ros', None)
    return keys


def message_dependencies() -> set[str]:
    """The packages of the messages' field types (rosidl_generate_interfaces DEPENDENCIES)."""
    deps = re.search(r'rosidl_generate_interfaces\([^)]*DEPENDENCIES ([\w ]+?)\s*\)',
                     (ROOT / 'CMakeLists.txt').read_text())
    return set(deps.group(1).split())


def cmake_keys() -> set[str]:
    """Packages CMakeLists.txt finds, and those its messages depend on."""
    text = (ROOT / 'CMakeLists.txt').read_text()
    return set(re.findall(r'find_package\((\w+) REQUIRED\)', text)) | message_dependencies()


def cmake_test_keys() -> set[str]:
    """Packages CMakeLists.txt finds only under BUILD_TESTING."""
    text = (ROOT / 'CMakeLists.txt').read_text()
    block = re.search(r'if\(BUILD_TESTING\)(.*?)endif\(\)', text, re.S).group(1)
    return set(re.findall(r'find_package\((\w+) REQUIRED\)', block))


def test_every_import_is_classified():
    """A new third-party import must be mapped to a rosdep key or listed as pip-installed."""
    _, unknown_run = module_keys(python_files(RUN_FOLDERS))
    _, unknown_test = module_keys(python_files(TEST_FOLDERS))
    assert not unknown_run + unknown_test, (
        'imports that are neither a rosdep key (ROSDEP_KEYS / ROS_PACKAGES) nor PIP_ONLY: '
        + '; '.join(unknown_run + unknown_test))


def test_run_time_dependencies_are_exec_depends():
    tags = declared()
    run = {**module_keys(python_files(RUN_FOLDERS))[0], **launch_keys()}
    run[MESSAGE_RUNTIME] = ['CMakeLists.txt (generated messages)']
    missing = {key: sorted(set(where))[:3] for key, where in run.items()
               if not any(key in tags.get(tag, ()) for tag in RUN_TAGS)}
    assert not missing, f'used at run time, not an exec_depend/depend: {missing}'


def test_build_dependencies_are_build_or_buildtool_depends():
    tags = declared()
    build = cmake_keys() - cmake_test_keys()
    missing = sorted(key for key in build if not any(key in tags.get(t, ()) for t in BUILD_TAGS))
    assert not missing, f'CMakeLists.txt needs them, not a build/buildtool_depend: {missing}'
    # message field types are needed by the generated code at run time as well
    assert message_dependencies() <= tags.get('depend', set())
    assert tags.get('member_of_group') == {INTERFACE_GROUP}


def test_test_dependencies_are_test_depends():
    tags = declared()
    test = module_keys(python_files(TEST_FOLDERS))[0]
    missing = {key: sorted(set(where))[:3] for key, where in test.items()
               if not any(key in tags.get(tag, ()) for tag in TEST_TAGS)}
    missing.update({key: ['CMakeLists.txt (BUILD_TESTING)'] for key in cmake_test_keys()
                    if key not in tags.get('test_depend', set())})
    assert not missing, f'used by the tests, not a test_depend: {missing}'


def test_nothing_declared_is_unused():
    """Every key has a user, and the narrowest tag that covers its users."""
    tags = declared()
    run = set(module_keys(python_files(RUN_FOLDERS))[0]) | set(launch_keys()) | {MESSAGE_RUNTIME}
    test = set(module_keys(python_files(TEST_FOLDERS))[0]) | cmake_test_keys()
    build = cmake_keys() - cmake_test_keys()
    deps = message_dependencies()
    expected = {
        'buildtool_depend': build - deps,
        'build_depend': set(),
        'depend': deps,
        'exec_depend': run - deps,
        'test_depend': test - run - deps,
    }
    for tag, keys in expected.items():
        assert tags.get(tag, set()) == keys, (
            f'{tag}: unused {sorted(tags.get(tag, set()) - keys)}, '
            f'missing {sorted(keys - tags.get(tag, set()))}')


@pytest.mark.parametrize('module', sorted(PIP_ONLY))
def test_pip_only_modules_are_documented_where_the_table_says(module):
    """The file PIP_ONLY names for a pip-installed module mentions it."""
    for path in re.findall(r'[\w/.-]+\.(?:md|txt|sh)', PIP_ONLY[module]):
        text = (ROOT / path).read_text()
        assert re.search(rf'\b{module}\b', text, re.I), f'{path} does not mention {module}'
