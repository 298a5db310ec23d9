"""``tf2_msgs/TFMessage`` for the tests, where the ROS install that has it is missing.

The PyPI ROS wheels ship no tf2_msgs. Its one message is ``geometry_msgs/TransformStamped[]
transforms``; built here from that definition with the wheels' rosidl, it is the same type on
the wire: the test checks its RIHS01 hash against the one rosbags' Jazzy typestore knows for
the real ``tf2_msgs/msg/TFMessage``. On a ROS install the real package is used instead.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.0.0</version>
  <description>test build of tf2_msgs/TFMessage</description>
  <maintainer email="test@example.com">test</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""
CMAKE = """cmake_minimum_required(VERSION 3.16)
project(tf2_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} "msg/TFMessage.msg" DEPENDENCIES geometry_msgs)
ament_package()
"""
TF_MESSAGE = 'geometry_msgs/TransformStamped[] transforms\n'


def build(root: Path) -> dict:
    """Build into ``root/install``; the path entries a process needs to import it (to
    prepend to PYTHONPATH, LD_LIBRARY_PATH, AMENT_PREFIX_PATH), and TF2_MSGS_SHARE; empty
    when tf2_msgs imports already."""
    try:
        import tf2_msgs.msg  # noqa: F401
        return {}
    except ImportError:
        pass
    src, build_dir, prefix = root / 'src', root / 'build', root / 'install'
    (src / 'msg').mkdir(parents=True, exist_ok=True)
    (src / 'package.xml').write_text(PACKAGE_XML)
    (src / 'CMakeLists.txt').write_text(CMAKE)
    (src / 'msg' / 'TFMessage.msg').write_text(TF_MESSAGE)
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    for cmd in (['cmake', '-S', str(src), '-B', str(build_dir), f'-DCMAKE_INSTALL_PREFIX={prefix}',
                 f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF'],
                ['cmake', '--build', str(build_dir), '-j2', '--target', 'install']):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise RuntimeError(f'building tf2_msgs failed: {out.stdout[-2000:]}'
                               f'{out.stderr[-2000:]}')
    py = f'python{sys.version_info[0]}.{sys.version_info[1]}'
    site = next(prefix.glob(f'lib/{py}/site-packages'), None) or \
        next(prefix.glob('local/lib/*/dist-packages'))
    return {'PYTHONPATH': str(site), 'LD_LIBRARY_PATH': str(prefix / 'lib'),
            'AMENT_PREFIX_PATH': str(prefix), 'TF2_MSGS_SHARE': str(prefix / 'share' / 'tf2_msgs')}
