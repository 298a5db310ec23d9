"""Foundation: the core stays ROS-free, the custom messages round-trip through rclpy and rosbags,
and the package's executables are installed."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MSG_TYPES = ('SampledMatches', 'RelativePose')


def test_core_imports_without_rclpy():
    """Every romav2_core module imports with rclpy (and every ROS message package) blocked."""
    code = textwrap.dedent('''
        import importlib, importlib.abc, pkgutil, sys
        BLOCKED = ('rclpy', 'rosidl_runtime_py', 'sensor_msgs', 'std_msgs', 'romav2_ros')
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'blocked by the test: {name}')
        sys.meta_path.insert(0, Block())
        import romav2_core
        names = [m.name for m in pkgutil.walk_packages(romav2_core.__path__, 'romav2_core.')]
        for name in names:
            importlib.import_module(name)
        leaked = [m for m in sys.modules if m.split('.')[0] in BLOCKED]
        assert not leaked, leaked
        print(len(names))
    ''')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 3  # config, geometry, interface at least


def _typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    for name in MSG_TYPES:
        text = (ROOT / 'msg' / f'{name}.msg').read_text()
        store.register(get_types_from_msg(text, f'romav2_ros/msg/{name}'))
    return store


def _sample_messages():
    from builtin_interfaces.msg import Time
    from romav2_ros.msg import RelativePose, SampledMatches
    rng = np.random.default_rng(0)
    n = 7
    matches = SampledMatches()
    matches.header.stamp = Time(sec=12, nanosec=345)
    matches.header.frame_id = 'left_optical'
    matches.stamp_b = Time(sec=12, nanosec=346)
    matches.frame_id_b = 'right_optical'
    matches.width_a, matches.height_a, matches.width_b, matches.height_b = 640, 480, 320, 240
    matches.points_a = rng.random(2 * n, dtype=np.float32) * 100
    matches.points_b = rng.random(2 * n, dtype=np.float32) * 100
    matches.certainty = rng.random(n, dtype=np.float32)
    matches.covariance_a = np.zeros(4 * n, np.float32)
    matches.covariance_b = rng.random(4 * n, dtype=np.float32)
    pose = RelativePose()
    pose.header = matches.header
    pose.stamp_b = matches.stamp_b
    pose.frame_id_b = 'cam_prev'
    pose.pose.pose.position.x = 0.25
    pose.pose.pose.orientation.w = 1.0
    pose.pose.covariance = rng.random(36).tolist()
    pose.num_matches, pose.num_inliers, pose.scale_observable = 500, 420, False
    pose.mean_epipolar_error = 0.375  # exact in float32
    return {'SampledMatches': matches, 'RelativePose': pose}


def built_share() -> pathlib.Path:
    """share/romav2_ros of the build under test: the ament index's (a sourced colcon
    workspace), else the venv prefix's (scripts/setup_env.sh, nothing sourced)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    try:
        return pathlib.Path(get_package_share_directory('romav2_ros'))
    except (OSError, PackageNotFoundError):  # OSError: AMENT_PREFIX_PATH unset
        return pathlib.Path(sys.prefix) / 'share' / 'romav2_ros'


@pytest.mark.parametrize('name', MSG_TYPES)
def test_custom_message_type_hash_matches_rosbags(name):
    """rosbags' RIHS01 hash of msg/*.msg equals the hash rosidl generated for rclpy."""
    built = built_share() / 'msg' / f'{name}.json'
    hashes = json.loads(built.read_text())['type_hashes']
    ours = next(h['hash_string'] for h in hashes
                if h['type_name'] == f'romav2_ros/msg/{name}')
    assert _typestore().hash_rihs01(f'romav2_ros/msg/{name}') == ours


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_custom_messages_round_trip_rclpy_and_rosbag2(tmp_path, storage):
    """rclpy CDR bytes == rosbags CDR bytes, and they survive a rosbag2 file unchanged."""
    from rclpy.serialization import deserialize_message, serialize_message
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer
    from romav2_ros import msg as msg_module
    store = _typestore()
    messages = _sample_messages()
    raw = {name: serialize_message(m) for name, m in messages.items()}

    for name, data in raw.items():
        msgtype = f'romav2_ros/msg/{name}'
        ours = store.serialize_cdr(store.deserialize_cdr(data, msgtype), msgtype).tobytes()
        # Same layout and bytes, except alignment padding: Fast CDR (rclpy) leaves padding bytes
        # uninitialised while rosbags writes zeros, so a differing byte must be a zero there.
        assert len(ours) == len(data)
        differing = [i for i in range(len(ours)) if ours[i] != data[i]]
        assert all(ours[i] == 0 for i in differing), differing
        assert len(differing) <= 3 * 8, differing  # at most a few pads of < 8 bytes each
        assert deserialize_message(ours, getattr(msg_module, name)) == messages[name]

    bag = tmp_path / 'bag'
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        for i, (name, data) in enumerate(raw.items()):
            conn = writer.add_connection(f'/romav2/{name.lower()}',
                                         f'romav2_ros/msg/{name}', typestore=store)
            writer.write(conn, 1000 + i, data)
    with Reader(bag) as reader:
        read = {c.msgtype.split('/')[-1]: bytes(d) for c, _, d in reader.messages()}
        hashes = {c.msgtype.split('/')[-1]: c.digest for c in reader.connections}
    assert read == {k: bytes(v) for k, v in raw.items()}  # the bag stores bytes unchanged
    for name, data in read.items():
        back = deserialize_message(data, getattr(msg_module, name))
        assert back == messages[name]
        assert hashes[name] == store.hash_rihs01(f'romav2_ros/msg/{name}')


def test_messages_live_in_the_romav2_ros_folder_that_is_imported():
    """One romav2_ros folder holds the hand-written modules and the generated messages: the
    source folder in the venv (scripts/setup_env.sh), install/ in a colcon workspace. A source
    tree put first on sys.path over an install space would split them (docs/workspace.md)."""
    import romav2_ros
    import romav2_ros.msg
    package = pathlib.Path(romav2_ros.__file__).parent
    assert pathlib.Path(romav2_ros.msg.__file__).parent == package / 'msg'
    assert (package / 'node.py').is_file()
    assert list(package.glob('romav2_ros_s__rosidl_typesupport_c*.so'))


def test_node_executable_installed():
    """`ros2 run romav2_ros romav2_node` equivalent: the console script exists and runs main()."""
    exe = pathlib.Path(sys.executable).parent / 'romav2_node'
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert 'romav2_ros.node' in exe.read_text()
