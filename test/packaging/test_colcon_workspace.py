"""A real ROS 2 workspace: the repository in ``ws/src``, a plain ``colcon build``, the install.

The standard steps of README.md / docs/workspace.md, with colcon from PyPI over the venv's ROS
wheels (``AMENT_PREFIX_PATH`` / ``CMAKE_PREFIX_PATH`` = the venv, as
``/opt/ros/jazzy/setup.bash`` sets them to /opt/ros/jazzy), run from the activated venv:

    colcon build && source install/setup.bash

The checkout copied to ``ws/src/romav2_ros`` is what a clone gives (git's tracked and
unignored files; no generated message modules), and every process runs as on a robot, where
the package is not pip-installed: the venv's editable finder for it is dropped
(:data:`SITECUSTOMIZE`), so nothing from the checkout the tests run in can fill a gap in the
install space. Then: the messages import from the install
space, share/romav2_ros holds launch/, config/ and rviz/, the executables run with the venv's
Python, the two-process stereo test passes against
``install/romav2_ros/lib/romav2_ros/romav2_node``, and ``colcon test`` outside the private
network namespace skips the DDS tests with the reason instead of failing.
"""
from __future__ import annotations

import configparser
import json
import os
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = 'romav2_ros'
VENV = Path(sys.prefix)
#: The DDS test run against the installed node, and a DDS-free one, for ``colcon test``.
E2E_TEST = 'test/ros/test_node_e2e.py::test_stereo_one_output_per_pair'
NO_DDS_TESTS = ('test_custom_message_type_hash_matches_rosbags',
                'test_messages_live_in_the_romav2_ros_folder_that_is_imported')

#: Run at every interpreter start of the workspace's processes (from PYTHONPATH, after the
#: venv's .pth files): removes the finder of ``pip install -e .`` for this package.
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [finder for finder in sys.meta_path
                    if not getattr(finder, '__module__', '').startswith('__editable___romav2')]
"""

pytestmark = [pytest.mark.slow, pytest.mark.ros, pytest.mark.usefixtures('ros_env_guard')]


def ros_env(ws: Path, **extra) -> dict:
    """The activated venv as ROS's setup.bash would leave it (the wheels' bootstrap kept),
    without the package's editable install (SITECUSTOMIZE)."""
    env = dict(os.environ)
    env.update(VIRTUAL_ENV=str(VENV), PATH=os.pathsep.join([str(VENV / 'bin'), env['PATH']]),
               AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ws / 'robot_site'),
                                                        env.get('PYTHONPATH')])))
    env.pop('PYTHONHOME', None)
    env.update(extra)
    return env


def bash(script: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', '-c', 'set -eo pipefail\n' + script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def sourced(script: str) -> str:
    return 'set +u; source install/setup.bash\n' + script


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
    """``ws/`` after ``colcon build`` of a clone-equivalent copy of this checkout."""
    if shutil.which('git') is None:
        pytest.fail('git is needed to copy the checkout as a clone would')
    ws = tmp_path_factory.mktemp('ws')
    (ws / 'robot_site').mkdir()
    (ws / 'robot_site' / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    src = ws / 'src' / PACKAGE
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others',
                            '--exclude-standard'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    for name in filter(None, files):
        if (ROOT / name).is_file():  # a file deleted in the work tree is not in a clone
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    build = bash('colcon build --event-handlers console_direct-', ws, ros_env(ws), 900)
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-4000:]
    assert 'Summary: 1 package finished' in build.stdout, build.stdout[-3000:]
    return ws


def test_colcon_finds_the_package_and_installs_it(workspace):
    listed = bash('colcon list', workspace, ros_env(workspace), 60)
    assert listed.stdout.split() == [PACKAGE, f'src/{PACKAGE}', '(ros.ament_cmake)'], \
        listed.stdout
    share = workspace / 'install' / PACKAGE / 'share' / PACKAGE
    for folder in ('launch', 'config', 'rviz'):
        ours = sorted(p.name for p in (ROOT / folder).iterdir() if p.is_file())
        assert sorted(p.name for p in (share / folder).iterdir()) == ours, folder
    assert ET.parse(share / 'package.xml').getroot().findtext('name') == PACKAGE
    assert sorted(p.name for p in (share / 'msg').glob('*.msg')) == \
        sorted(p.name for p in (ROOT / 'msg').glob('*.msg'))


def test_executables_are_installed_with_the_venv_python(workspace):
    """Every console_scripts entry of setup.cfg is in lib/romav2_ros (``ros2 run``), runnable,
    with the venv's Python in its shebang because colcon ran from the activated venv."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    entries = dict(line.replace(' ', '').split('=') for line in
                   cfg['options.entry_points']['console_scripts'].split('\n') if line.strip())
    lib = workspace / 'install' / PACKAGE / 'lib' / PACKAGE
    assert sorted(p.name for p in lib.iterdir()) == sorted(entries)
    for name, target in entries.items():
        exe = lib / name
        assert os.access(exe, os.X_OK), exe
        text = exe.read_text()
        shebang = Path(text.splitlines()[0][2:])
        assert shebang.parent == VENV / 'bin', shebang
        module, function = target.split(':')
        assert f'from {module} import {function}' in text
    helped = bash(sourced(f'{lib / "romav2-replay"} --help'), workspace, ros_env(workspace),
                  120)
    assert helped.returncode == 0 and 'usage' in helped.stdout.lower(), helped.stderr


def test_python_packages_and_messages_come_from_the_install_space(workspace):
    """After ``source install/setup.bash`` (any directory) every package and the generated
    messages import from install/, the messages round-trip through rclpy's CDR, and no
    generic ``cuda_ext`` is installed."""
    code = '\n'.join([
        'import importlib.util, sys, romav2_ros, romav2_ros.msg, romav2_core, romav2_cuda_ext',
        'import romav2_ros.node',
        'assert not [f for f in sys.meta_path if "editable" in repr(f)], sys.meta_path',
        'from rclpy.serialization import deserialize_message, serialize_message',
        'from romav2_ros.msg import RelativePose, SampledMatches',
        'm = SampledMatches(width_a=640, points_a=[1.5, 2.5], frame_id_b="right")',
        'assert deserialize_message(serialize_message(m), SampledMatches) == m',
        'r = RelativePose(num_inliers=7)',
        'assert deserialize_message(serialize_message(r), RelativePose) == r',
        'assert importlib.util.find_spec("cuda_ext") is None',
        'for m in (romav2_ros, romav2_ros.msg, romav2_ros.node, romav2_core, romav2_cuda_ext):',
        '    print(m.__file__)',
    ])
    out = bash(sourced(f'{sys.executable} -c \'{code}\''), workspace, ros_env(workspace), 120)
    assert out.returncode == 0, out.stderr
    site = workspace / 'install' / PACKAGE / 'lib' / \
        f'python{sys.version_info[0]}.{sys.version_info[1]}' / 'site-packages'
    files = [Path(line) for line in out.stdout.split()]
    assert files == [site / 'romav2_ros' / '__init__.py', site / 'romav2_ros' / 'msg' /
                     '__init__.py', site / 'romav2_ros' / 'node.py',
                     site / 'romav2_core' / '__init__.py',
                     site / 'romav2_cuda_ext' / '__init__.py'], out.stdout
    # the hand-written package __init__ replaced rosidl's empty one
    assert files[0].read_text() == (ROOT / PACKAGE / '__init__.py').read_text()
    assert {p.name for p in (site / 'romav2_cuda_ext').iterdir()} >= {
        '__init__.py', 'local_corr.cu', 'local_corr.cpp'}


def test_install_time_cuda_build_follows_setup_py_plan(workspace):
    """colcon's build ran setup.py's CUDA step: with no build planned (this CPU machine) it
    said why and installed no library; with one, the library and its build info are there."""
    setup_py = runpy.run_path(str(ROOT / 'setup.py'), run_name='setup_py_under_test')
    import torch
    env = dict(os.environ)
    nvcc = setup_py['_nvcc'](env)
    arch_list, why = setup_py['cuda_extension_plan'](
        torch, env, nvcc, setup_py['_nvcc_release'](nvcc) if nvcc else None)
    log = (workspace / 'log' / 'latest_build' / PACKAGE / 'stderr.log').read_text()
    site = next((workspace / 'install' / PACKAGE / 'lib').glob('python3*/site-packages'))
    built = sorted((site / 'romav2_cuda_ext').glob('_romav2_local_corr*.so'))
    if why:
        assert f'romav2_cuda_ext: no install-time CUDA build ({why})' in log, log
        assert not built
    else:
        assert len(built) == 1, log
        info = (site / 'romav2_cuda_ext' / setup_py['CUDA_EXT_INFO']).read_text()
        assert json.loads(info) == {'torch': torch.__version__, 'cuda': torch.version.cuda,
                                    'arch_list': arch_list}


def test_installed_node_passes_the_two_process_stereo_test(workspace):
    """test_node_e2e's stereo test against install/romav2_ros/lib/romav2_ros/romav2_node,
    started as ``ros2 run`` would (its own shebang), both processes on the install space."""
    exe = workspace / 'install' / PACKAGE / 'lib' / PACKAGE / 'romav2_node'
    src = workspace / 'src' / PACKAGE
    run = bash(sourced(f'{sys.executable} -m pytest -q -p no:cacheprovider -rs '
                       f'{src / E2E_TEST}'), workspace,
               ros_env(workspace, ROMAV2_NODE_EXECUTABLE=str(exe)), 600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert '1 passed' in run.stdout and 'skipped' not in run.stdout, run.stdout[-3000:]


def test_colcon_test_outside_the_namespace_skips_dds_tests(workspace):
    """``colcon test`` as on a robot (no confinement asked for, default discovery): the DDS test
    is skipped with the reason, the rest passes against the install space (the whole suite is
    collected, so no test module may put the source tree before it), no failure reported."""
    selected = ' or '.join((E2E_TEST.split('::')[1],) + NO_DDS_TESTS)
    env = ros_env(workspace, PYTEST_ADDOPTS=f'-k "{selected}"')
    for name in ('ROMAV2_TEST_CONFINEMENT', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID'):
        env.pop(name, None)
    run = bash(sourced('colcon test --event-handlers console_direct-\n'
                       'colcon test-result --all'), workspace, env, 600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    report = workspace / 'build' / PACKAGE / 'test_results' / PACKAGE / 'romav2_tests.xunit.xml'
    cases = {case.get('name'): case for case in ET.parse(report).getroot().iter('testcase')}
    e2e = cases.pop(E2E_TEST.split('::')[1])
    skipped = e2e.find('skipped')
    assert skipped is not None and 'private network namespace' in skipped.get('message'), \
        ET.tostring(e2e, 'unicode')
    assert {name.split('[')[0] for name in cases} == set(NO_DDS_TESTS), sorted(cases)
    assert all(case.find('failure') is None and case.find('skipped') is None
               for case in cases.values())
