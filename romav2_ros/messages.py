"""ROS messages from the pipeline's arrays: the one place that builds output messages.

Inputs are numpy arrays and ``romav2_core`` results with documented units and frames; the
builders only lay them out as the standard messages define (``sensor_msgs/Image`` via
``image_conversion.numpy_to_imgmsg``, ``stereo_msgs/DisparityImage``, ``sensor_msgs/PointCloud2``,
REP 103 poses and covariances) and the package's own ``SampledMatches`` / ``RelativePose``,
copying each array's bytes once (messages with array fields are built with
``check_fields=True``, so that rclpy keeps the ``array.array`` as it is:
``image_conversion.byte_array``). Also the one stamp <-> nanoseconds conversion.
"""
from __future__ import annotations

import array
from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import (Point, PoseWithCovariance, PoseWithCovarianceStamped,
                               Quaternion, TransformStamped, TwistWithCovariance, Vector3)
from nav_msgs.msg import Odometry
from romav2_ros.msg import RelativePose, SampledMatches
from sensor_msgs.msg import Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from romav2_core.pose import PoseEstimate, rotation_to_quaternion
from romav2_core.products import Samples
from romav2_core.stereo import RectifiedStereo
from romav2_core.tracking import OdometryStep
from romav2_ros.image_conversion import byte_array, numpy_to_imgmsg

#: DisparityImage.delta_d: RoMa disparities are continuous; 1/16 px as stereo_image_proc.
DISPARITY_DELTA_D = 1.0 / 16
#: PointCloud2 layout of ~/points2: x y z rgb, float32 each at offsets 0, 4, 8, 12 (16-byte
#: points; stereo_image_proc's point_cloud_node pads to 32 bytes with rgb at 16 -- readers that
#: go by the fields' offsets, as PCL and rviz do, read both).
POINT_FIELDS = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, n in enumerate(('x', 'y', 'z', 'rgb'))]
POINT_STEP = 16


def output_type(key: str) -> type:
    """The message class of output ``key`` (``pipeline.OUTPUTS``)."""
    return {'disparity': DisparityImage, 'points2': PointCloud2, 'matches': SampledMatches,
            'relative_pose': PoseWithCovarianceStamped, 'relative_pose_info': RelativePose,
            'odometry': Odometry}.get(key, Image)


def stamp_ns(stamp) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def to_time(ns: int) -> Time:
    """Integer nanoseconds as a ``builtin_interfaces/Time``."""
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def disparity_image(disparity: np.ndarray, header, stereo: RectifiedStereo,
                    disparity_range: tuple[float, float]) -> DisparityImage:
    """``[H x W]`` float32 disparity (px, NaN invalid) by the DisparityImage contract; its
    ``min/max_disparity`` are the configured range (as image_pipeline publishes its search
    range), the same every frame, so a viewer's colour scale stays put."""
    h, w = disparity.shape
    return DisparityImage(
        header=header, image=numpy_to_imgmsg(disparity, '32FC1', header),
        f=stereo.f, t=stereo.baseline,
        valid_window=RegionOfInterest(x_offset=0, y_offset=0, height=h, width=w),
        min_disparity=float(disparity_range[0]), max_disparity=float(disparity_range[1]),
        delta_d=DISPARITY_DELTA_D)


def point_cloud(points: np.ndarray, header, organized: bool = True,
                count: Optional[int] = None) -> PointCloud2:
    """Points already in :data:`POINT_FIELDS`' layout (``products.stereo_maps``): organised
    ``[H x W x 4]`` float32 (NaN points invalid, ``is_dense`` false), or unorganised ``[N x 4]``
    whose first ``count`` rows are the valid points (one row, ``is_dense`` true)."""
    if not organized:
        points = points[None, :count]
    height, width = points.shape[:2]
    msg = PointCloud2(header=header, height=height, width=width, fields=POINT_FIELDS,
                      is_bigendian=False, point_step=POINT_STEP,
                      row_step=POINT_STEP * width, is_dense=not organized, check_fields=True)
    msg.data = byte_array(points)
    return msg


def pose_with_covariance(R: np.ndarray, t: np.ndarray, covariance: np.ndarray
                         ) -> PoseWithCovariance:
    """A rotation, translation (m) and REP 103 6x6 covariance as PoseWithCovariance."""
    q = rotation_to_quaternion(R)
    msg = PoseWithCovariance()
    msg.pose.position = Point(x=float(t[0]), y=float(t[1]), z=float(t[2]))
    msg.pose.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                      w=float(q[3]))
    msg.covariance = np.asarray(covariance, np.float64).ravel()
    return msg


def relative_pose(est: PoseEstimate, header_b) -> PoseWithCovarianceStamped:
    """The pose of camera A in camera B's optical frame, stamped with B's stamp and frame:
    the frame it is expressed in, at the time that frame is looked up (tf2)."""
    return PoseWithCovarianceStamped(
        header=Header(stamp=header_b.stamp, frame_id=header_b.frame_id),
        pose=pose_with_covariance(est.R, est.t, est.covariance))


def relative_pose_info(est: PoseEstimate, header_a, header_b,
                       tracking: Optional[OdometryStep] = None) -> RelativePose:
    """The pose with both stamps and its quality; ``tracking``: stereo_odometry's state."""
    msg = RelativePose(header=header_a, stamp_b=header_b.stamp, frame_id_b=header_b.frame_id,
                       pose=pose_with_covariance(est.R, est.t, est.covariance),
                       num_matches=est.num_matches, num_inliers=est.num_inliers,
                       scale_observable=est.scale_observable,
                       mean_epipolar_error=est.mean_epipolar_error,
                       mean_reprojection_error=est.mean_reprojection_error)
    if tracking is not None:
        _tracking_fields(msg, tracking)
    return msg


def no_relative_pose(header_a, header_b, tracking: OdometryStep) -> RelativePose:
    """A frame that got no pose (tracking LOST): identity with covariance[0] = -1."""
    msg = RelativePose(header=header_a, stamp_b=header_b.stamp, frame_id_b=header_b.frame_id,
                       scale_observable=True, mean_epipolar_error=float('nan'),
                       mean_reprojection_error=float('nan'))
    msg.pose.pose.orientation.w = 1.0
    msg.pose.covariance[0] = -1.0
    _tracking_fields(msg, tracking)
    return msg


def _tracking_fields(msg: RelativePose, step: OdometryStep) -> None:
    msg.tracking_state = step.state
    msg.keyframe_id = step.keyframe_id
    msg.segment = step.segment
    msg.new_keyframe = step.new_keyframe


def odometry(step: OdometryStep, stamp, odom_frame: str, child_frame: str) -> Odometry:
    """nav_msgs/Odometry: the pose of ``child_frame`` in ``odom_frame`` (covariance over that
    frame's axes) and its twist in ``child_frame``, at ``stamp``."""
    msg = Odometry(header=Header(stamp=stamp, frame_id=odom_frame), child_frame_id=child_frame,
                   pose=pose_with_covariance(step.R, step.p, step.covariance))
    msg.twist = TwistWithCovariance()
    msg.twist.twist.linear = Vector3(x=float(step.linear[0]), y=float(step.linear[1]),
                                     z=float(step.linear[2]))
    msg.twist.twist.angular = Vector3(x=float(step.angular[0]), y=float(step.angular[1]),
                                      z=float(step.angular[2]))
    msg.twist.covariance = np.asarray(step.twist_covariance, np.float64).ravel()
    return msg


def transform(step: OdometryStep, stamp, odom_frame: str, child_frame: str
              ) -> TransformStamped:
    """The odometry as TF: ``odom_frame -> child_frame`` (its pose in it) at ``stamp``."""
    msg = TransformStamped(header=Header(stamp=stamp, frame_id=odom_frame),
                           child_frame_id=child_frame)
    q = rotation_to_quaternion(step.R)
    msg.transform.translation = Vector3(x=float(step.p[0]), y=float(step.p[1]),
                                        z=float(step.p[2]))
    msg.transform.rotation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                        w=float(q[3]))
    return msg


def sampled_matches(samples: Samples, header_a, header_b, hw_a, hw_b) -> SampledMatches:
    """Sampled matches (``products.Samples``: OpenCV px, px^2) as ``SampledMatches``."""
    n = len(samples)
    return SampledMatches(
        header=header_a, stamp_b=header_b.stamp, frame_id_b=header_b.frame_id,
        width_a=hw_a[1], height_a=hw_a[0], width_b=hw_b[1], height_b=hw_b[0],
        points_a=float_array(samples.points_a), points_b=float_array(samples.points_b),
        certainty=float_array(samples.certainty),
        covariance_a=float_array(np.zeros(4 * n)),
        covariance_b=float_array(samples.cov_b), check_fields=True)


def float_array(values: np.ndarray) -> array.array:
    """``values`` flattened as the ``array.array('f')`` rclpy stores for a ``float32[]`` field
    (any other type is converted element by element; see ``byte_array``)."""
    out = array.array('f')
    out.frombytes(np.ascontiguousarray(values, np.float32).reshape(-1).view(np.uint8))
    return out
