"""Build a standard ROS message package that the PyPI wheels lack, for the tests.

The PyPI ROS wheels ship rosidl (generators, type support, cmake) but not every standard
message package (tf2_msgs, bond, ...). Built here from the message definitions with the wheels'
rosidl, such a package is the same type on the wire as the real one: the tests check its RIHS01
type hash (written by rosidl into ``share/<package>/msg/<Name>.json``) against an independent
computation (rosbags). On a ROS install that has the package, nothing is built.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>{package}</name>
  <version>0.0.0</version>
  <description>test build of {package} messages</description>
  <maintainer email="test@example.com">test</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
{depends}
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""
CMAKE = """cmake_minimum_required(VERSION 3.16)
project({package})
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
{find_depends}
rosidl_generate_interfaces(${{PROJECT_NAME}} {files} DEPENDENCIES {depends})
ament_package()
"""


def build(root: Path, package: str, messages: dict, depends: tuple) -> dict:
    """Build ``package`` with ``messages`` (name -> .msg definition), which use the message
    packages ``depends``, into ``root/install``.

    Returns the path entries a process needs to import it (to prepend to PYTHONPATH,
    LD_LIBRARY_PATH, AMENT_PREFIX_PATH: the type support libraries are found through
    LD_LIBRARY_PATH, so only a process started with them can use the package) and
    ``<PACKAGE>_SHARE``, its share folder; empty when ``<package>.msg`` imports already.
    """
    try:
        importlib.import_module(f'{package}.msg')
        return {}
    except ImportError:
        pass
    src, build_dir, prefix = root / 'src', root / 'build', root / 'install'
    (src / 'msg').mkdir(parents=True, exist_ok=True)
    (src / 'package.xml').write_text(PACKAGE_XML.format(
        package=package, depends='\n'.join(f'  <depend>{d}</depend>' for d in depends)))
    (src / 'CMakeLists.txt').write_text(CMAKE.format(
        package=package, find_depends='\n'.join(f'find_package({d} REQUIRED)' for d in depends),
        files=' '.join(f'"msg/{name}.msg"' for name in messages), depends=' '.join(depends)))
    for name, definition in messages.items():
        (src / 'msg' / f'{name}.msg').write_text(definition)
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    for cmd in (['cmake', '-S', str(src), '-B', str(build_dir), f'-DCMAKE_INSTALL_PREFIX={prefix}',
                 f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF'],
                ['cmake', '--build', str(build_dir), '-j2', '--target', 'install']):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise RuntimeError(f'building {package} failed: {out.stdout[-2000:]}'
                               f'{out.stderr[-2000:]}')
    py = f'python{sys.version_info[0]}.{sys.version_info[1]}'
    site = next(prefix.glob(f'lib/{py}/site-packages'), None) or \
        next(prefix.glob('local/lib/*/dist-packages'))
    return {'PYTHONPATH': str(site), 'LD_LIBRARY_PATH': str(prefix / 'lib'),
            'AMENT_PREFIX_PATH': str(prefix),
            f'{package.upper()}_SHARE': str(prefix / 'share' / package)}


def built_hash(env: dict, package: str, name: str) -> str:
    """The RIHS01 hash rosidl generated for ``<package>/msg/<name>`` in a build by
    :func:`build` (``env`` its result)."""
    path = Path(env[f'{package.upper()}_SHARE']) / 'msg' / f'{name}.json'
    return json.loads(path.read_text())['type_hashes'][0]['hash_string']
