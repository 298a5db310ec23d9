"""Test doubles and bag builders shared by the replay tests and the subprocesses they start.

The subprocesses import this module through ``--model-source replay_doubles:<factory>``
with this folder on PYTHONPATH.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from matcher_doubles import GridDouble

#: First stamp of the test bags.
T0_NS = 1_700_000_000 * 1_000_000_000
STEREO_TOPICS = ('/stereo/left/image_rect', '/stereo/left/camera_info',
                 '/stereo/right/image_rect', '/stereo/right/camera_info')
SEQUENCE_TOPICS = ('/camera/image_raw', '/camera/camera_info')


class ShiftOracle(GridDouble):
    """A DenseMatcher with a known warp: pixel (x, y) of A is at (x - shift_px, y) in B.

    Certainty 0.9 and covariance 0.25 px^2 everywhere; ``delay_s`` per match makes the
    replay slow enough to interrupt.
    """

    covariance_grid = np.eye(2) * 0.25

    def __init__(self, shift_px: float = 2.0, delay_s: float = 0.0):
        super().__init__(output_hw=(12, 16), delay=delay_s)
        self.shift_px = shift_px

    def warp_px(self, u, v, a, b):
        return u - self.shift_px, v


def oracle(config, device, weights, seed):
    """``model_source`` factory: the fast oracle."""
    return ShiftOracle()


def slow_oracle(config, device, weights, seed):
    """``model_source`` factory: 0.3 s per pair, so a test can interrupt mid-bag."""
    return ShiftOracle(delay_s=0.3)


def _typestore():
    return get_typestore(Stores.ROS2_JAZZY)


def _messages(ts, stamp_ns: int, frame_id: str, rgb: np.ndarray, tx: float = 0.0,
              f: float = 50.0):
    Header, Time = ts.types['std_msgs/msg/Header'], ts.types['builtin_interfaces/msg/Time']
    Image, CameraInfo = ts.types['sensor_msgs/msg/Image'], ts.types['sensor_msgs/msg/CameraInfo']
    RegionOfInterest = ts.types['sensor_msgs/msg/RegionOfInterest']
    header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                    frame_id=frame_id)
    h, w = rgb.shape[:2]
    image = Image(header=header, height=h, width=w, encoding='rgb8', is_bigendian=0,
                  step=3 * w, data=rgb.reshape(-1))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    info = CameraInfo(header=header, height=h, width=w, distortion_model='plumb_bob',
                      d=np.zeros(5), k=np.array([f, 0, cx, 0, f, cy, 0, 0, 1.0]),
                      r=np.eye(3).ravel(), p=np.array([f, 0, cx, tx, 0, f, cy, 0, 0, 0, 1, 0.0]),
                      binning_x=0, binning_y=0,
                      roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0,
                                           do_rectify=False))
    return image, info


def texture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_stereo_bag(path: Path, storage: str = 'mcap', pairs: int = 4,
                     period_ns: int = 100_000_000, extra_left: int = 0,
                     nan_info_pairs: frozenset = frozenset(), right_delay_ns: int = 0) -> list[int]:
    """A stereo bag of ``pairs`` synchronised pairs (64x48 rgb8) and ``extra_left`` left
    images without a right partner; returns the left stamps. Pairs in ``nan_info_pairs``
    have a NaN focal length in the right camera_info; right stamps are ``right_delay_ns``
    late (an unsynchronised rig)."""
    ts = _typestore()
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    stamps = [T0_NS + i * period_ns for i in range(pairs + extra_left)]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = [writer.add_connection(t, m, typestore=ts) for t, m in zip(
            STEREO_TOPICS, ['sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo'] * 2)]
        for i, stamp in enumerate(stamps):
            left = _messages(ts, stamp, 'left_optical', texture(i))
            right = _messages(ts, stamp + right_delay_ns, 'right_optical', texture(i), tx=-5.0,
                              f=np.nan if i in nan_info_pairs else 50.0)
            sides = (left,) if i >= pairs else (left, right)
            for side, (image, info) in enumerate(sides):
                for conn, msg in zip(conns[2 * side:2 * side + 2], (image, info)):
                    writer.write(conn, stamp, ts.serialize_cdr(msg, conn.msgtype))
    return stamps[:pairs]


def write_sequence_bag(path: Path, storage: str = 'mcap', frames: int = 4,
                       period_ns: int = 100_000_000) -> list[int]:
    """A monocular bag of ``frames`` images + camera_info; returns the stamps."""
    ts = _typestore()
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    stamps = [T0_NS + i * period_ns for i in range(frames)]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = [writer.add_connection(t, m, typestore=ts) for t, m in zip(
            SEQUENCE_TOPICS, ['sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo'])]
        for i, stamp in enumerate(stamps):
            for conn, msg in zip(conns, _messages(ts, stamp, 'camera_optical', texture(i))):
                writer.write(conn, stamp, ts.serialize_cdr(msg, conn.msgtype))
    return stamps
