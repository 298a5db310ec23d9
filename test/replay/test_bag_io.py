"""bag_io: typestore, rclpy <-> CDR conversion, bag-defined types, the always-closed writer."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from romav2_ros import bag_io

CUSTOM = ('romav2_ros/msg/SampledMatches', 'romav2_ros/msg/RelativePose')


@pytest.mark.parametrize('msgtype', CUSTOM)
def test_custom_types_hash_like_rosidl(msgtype):
    """The typestore's RIHS01 hash equals the one rosidl generated for the built messages."""
    generated = Path(sys.prefix) / 'share' / 'romav2_ros' / 'msg' / \
        f'{msgtype.rsplit("/", 1)[1]}.json'
    if not generated.is_file():
        pytest.skip(f'{generated} not built')
    expected = json.loads(generated.read_text())['type_hashes'][0]['hash_string']
    assert bag_io.typestore().hash_rihs01(msgtype) == expected


def test_rclpy_and_rosbags_agree_on_cdr():
    from romav2_ros.msg import SampledMatches
    msg = SampledMatches(width_a=64, height_a=48, points_a=[1.0, 2.0, 3.0, 4.0],
                         certainty=[0.5, 0.25])
    msg.header.frame_id = 'left'
    msg.header.stamp.sec = 7
    assert bag_io.msgtype_of(msg) == CUSTOM[0]
    raw = bag_io.serialize(msg)
    decoded = bag_io.typestore().deserialize_cdr(raw, CUSTOM[0])
    assert decoded.header.frame_id == 'left' and decoded.header.stamp.sec == 7
    np.testing.assert_array_equal(decoded.points_a, [1, 2, 3, 4])
    assert bag_io.deserialize(raw, CUSTOM[0]) == msg


def test_types_defined_only_in_the_bag_are_copied(tmp_path):
    """A message type unknown here travels with its stored definition into our output bag."""
    definition = 'std_msgs/Header header\nfloat64 value\n'
    foreign = get_typestore(Stores.ROS2_JAZZY)
    foreign.register(get_types_from_msg(definition, 'acme_msgs/msg/Thing'))
    Thing = foreign.types['acme_msgs/msg/Thing']
    Header = foreign.types['std_msgs/msg/Header']
    Time = foreign.types['builtin_interfaces/msg/Time']
    with Writer(tmp_path / 'robot', version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/thing', 'acme_msgs/msg/Thing', typestore=foreign)
        for i in range(3):
            msg = Thing(header=Header(stamp=Time(sec=i, nanosec=0), frame_id='x'), value=i / 2)
            writer.write(conn, i, foreign.serialize_cdr(msg, 'acme_msgs/msg/Thing'))
    store = get_typestore(Stores.ROS2_JAZZY)
    with bag_io.open_reader(tmp_path / 'robot') as reader, \
            bag_io.BagWriter(tmp_path / 'copy', 'sqlite3', store) as out:
        bag_io.register_bag_types(store, reader.connections)
        assert 'acme_msgs/msg/Thing' in store.types
        for conn, log_ns, raw in bag_io.read_messages(reader, reader.connections):
            out.write_raw(conn.topic, conn.msgtype, log_ns, raw, source=conn)
    fresh = get_typestore(Stores.ROS2_JAZZY)
    with Reader(tmp_path / 'copy') as reader:
        bag_io.register_bag_types(fresh, reader.connections)
        values = [fresh.deserialize_cdr(raw, c.msgtype).value for c, _, raw in reader.messages()]
        assert reader.connections[0].digest == foreign.hash_rihs01('acme_msgs/msg/Thing')
    assert values == [0.0, 0.5, 1.0]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_writer_is_closed_on_exceptions(tmp_path, storage):
    """Ctrl-C (or any error) inside the block still leaves a readable bag."""
    from std_msgs.msg import String
    with pytest.raises(KeyboardInterrupt):
        with bag_io.BagWriter(tmp_path / 'out', storage) as writer:
            for i in range(5):
                writer.write('/chatter', String(data=str(i)), i)
            writer.write('/unused_until_now', String(data='last'), 9)
            raise KeyboardInterrupt
    with Reader(tmp_path / 'out') as reader:
        assert {c.topic: c.msgcount for c in reader.connections} == {'/chatter': 5,
                                                                      '/unused_until_now': 1}
        data = [bag_io.deserialize(raw, c.msgtype).data for c, _, raw in reader.messages()]
    assert data == ['0', '1', '2', '3', '4', 'last']


def test_a_topic_keeps_its_type(tmp_path):
    from std_msgs.msg import String, UInt8
    with bag_io.BagWriter(tmp_path / 'out') as writer:
        writer.write('/t', String(data='a'), 0)
        with pytest.raises(ValueError, match='std_msgs/msg/UInt8 after std_msgs/msg/String'):
            writer.write('/t', UInt8(data=1), 1)
