"""ROS messages from the pipeline's arrays: the one place that builds output messages.

Inputs are numpy arrays and ``romav2_core`` results with documented units and frames; the
builders only lay them out as the standard messages define (``sensor_msgs/Image`` via
``image_conversion.numpy_to_imgmsg``, ``stereo_msgs/DisparityImage``, ``sensor_msgs/PointCloud2``
as stereo_image_proc's point_cloud_node, REP 103 poses and covariances) and the package's own
``SampledMatches`` / ``RelativePose``. Also the one stamp <-> nanoseconds conversion.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import (Point, PoseWithCovariance, PoseWithCovarianceStamped,
                               Quaternion, TransformStamped, TwistWithCovariance, Vector3)
from nav_msgs.msg import Odometry
from romav2_ros.msg import RelativePose, SampledMatches
from sensor_msgs.msg import Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from romav2_core.odometry import OdometryStep
from romav2_core.pose import PoseEstimate, rotation_to_quaternion
from romav2_core.stereo import RectifiedStereo
from romav2_ros.image_conversion import numpy_to_imgmsg

#: DisparityImage.delta_d: RoMa disparities are continuous; 1/16 px as stereo_image_proc.
DISPARITY_DELTA_D = 1.0 / 16
#: PointCloud2 layout of stereo_image_proc's point_cloud_node: x y z rgb, float32 each.
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


def disparity_image(disparity: np.ndarray, header, stereo: RectifiedStereo) -> DisparityImage:
    """``[H x W]`` float32 disparity (px, NaN invalid) by the DisparityImage contract."""
    h, w = disparity.shape
    finite = disparity[np.isfinite(disparity)]
    return DisparityImage(
        header=header, image=numpy_to_imgmsg(disparity.astype(np.float32), '32FC1', header),
        f=stereo.f, t=stereo.baseline,
        valid_window=RegionOfInterest(x_offset=0, y_offset=0, height=h, width=w),
        min_disparity=float(finite.min()) if finite.size else 0.0,
        max_disparity=float(finite.max()) if finite.size else 0.0,
        delta_d=DISPARITY_DELTA_D)


def packed_rgb(rgb: np.ndarray) -> np.ndarray:
    """``[... x 3]`` uint8 RGB as float32 whose bits are the uint32 ``0x00RRGGBB`` (PCL's rgb)."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).view(np.float32)


def point_cloud(points: np.ndarray, rgb: np.ndarray, header, organized: bool = True,
                stride: int = 1) -> PointCloud2:
    """``[H x W x 3]`` points (m, NaN invalid) and ``[H x W x 3]`` uint8 colours as PointCloud2.

    Organised: ``height x width`` of every ``stride``-th row and column, invalid points NaN,
    ``is_dense`` false. Unorganised: one row of the valid points only, ``is_dense`` true.
    """
    pts, col = points[::stride, ::stride], rgb[::stride, ::stride]
    cloud = np.empty(pts.shape[:2], dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                           ('rgb', '<f4')])
    cloud['x'], cloud['y'], cloud['z'] = pts[..., 0], pts[..., 1], pts[..., 2]
    cloud['rgb'] = packed_rgb(col)
    if not organized:
        cloud = cloud[np.isfinite(pts).all(axis=-1)][None, :]
    height, width = cloud.shape
    msg = PointCloud2(header=header, height=height, width=width, fields=POINT_FIELDS,
                      is_bigendian=False, point_step=POINT_STEP,
                      row_step=POINT_STEP * width, is_dense=not organized)
    msg.data = cloud.tobytes()
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


def relative_pose_info(est: PoseEstimate, header_a, header_b) -> RelativePose:
    return RelativePose(header=header_a, stamp_b=header_b.stamp, frame_id_b=header_b.frame_id,
                        pose=pose_with_covariance(est.R, est.t, est.covariance),
                        num_matches=est.num_matches, num_inliers=est.num_inliers,
                        scale_observable=est.scale_observable,
                        mean_epipolar_error=est.mean_epipolar_error,
                        mean_reprojection_error=est.mean_reprojection_error)


def odometry(step: OdometryStep, header_camera, odom_frame: str) -> Odometry:
    """nav_msgs/Odometry: the camera's pose in ``odom_frame`` (covariance over that frame's
    axes) and its twist in the camera frame (``child_frame_id``), at the camera's stamp."""
    msg = Odometry(header=Header(stamp=header_camera.stamp, frame_id=odom_frame),
                   child_frame_id=header_camera.frame_id,
                   pose=pose_with_covariance(step.R, step.p, step.covariance))
    msg.twist = TwistWithCovariance()
    msg.twist.twist.linear = Vector3(x=float(step.linear[0]), y=float(step.linear[1]),
                                     z=float(step.linear[2]))
    msg.twist.twist.angular = Vector3(x=float(step.angular[0]), y=float(step.angular[1]),
                                      z=float(step.angular[2]))
    msg.twist.covariance = np.asarray(step.twist_covariance, np.float64).ravel()
    return msg


def transform(step: OdometryStep, header_camera, odom_frame: str) -> TransformStamped:
    """The odometry as TF: ``odom_frame -> camera frame`` (the camera's pose in it)."""
    msg = TransformStamped(header=Header(stamp=header_camera.stamp, frame_id=odom_frame),
                           child_frame_id=header_camera.frame_id)
    q = rotation_to_quaternion(step.R)
    msg.transform.translation = Vector3(x=float(step.p[0]), y=float(step.p[1]),
                                        z=float(step.p[2]))
    msg.transform.rotation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                        w=float(q[3]))
    return msg


def sampled_matches(points_a, points_b, certainty, cov_b, header_a, header_b, hw_a, hw_b
                    ) -> SampledMatches:
    """``[N x 2]`` points (OpenCV px), ``[N]`` certainty, ``[N x 2 x 2]`` covariances (px^2)."""
    n = len(certainty)
    return SampledMatches(
        header=header_a, stamp_b=header_b.stamp, frame_id_b=header_b.frame_id,
        width_a=hw_a[1], height_a=hw_a[0], width_b=hw_b[1], height_b=hw_b[0],
        points_a=np.asarray(points_a, np.float32).ravel(),
        points_b=np.asarray(points_b, np.float32).ravel(),
        certainty=np.asarray(certainty, np.float32),
        covariance_a=np.zeros(4 * n, np.float32),
        covariance_b=np.asarray(cov_b, np.float32).ravel())
