"""Scoring a visual-odometry trajectory against the truth with ``evo``, the field's tool.

The same numbers as the command lines the README shows (``evo_ape tum gt.txt est.txt`` and
``evo_rpe tum gt.txt est.txt --delta 100 --delta_unit m --all_pairs --pairs_from_reference``),
through evo's own API (``evo.core.sync``, ``evo.core.metrics``, ``evo.tools.file_interface``);
nothing of the metrics is computed here.

* Association: poses of the two trajectories whose stamps differ by at most
  ``max_time_diff_s`` (evo's nearest-time sync); the estimate may miss frames (a covered lens,
  a reset) and the truth may have more.
* APE: RMSE of the position error (m), **no alignment**. The odometry's frame is the camera's
  (or the body's) pose at the start, and the truth is written in that same frame, so the two
  already share their origin; an SE(3)/Umeyama fit would rotate a drifting estimate onto the
  truth after the fact and hide the heading error a robot navigating in ``odom`` suffers.
* RPE: RMSE of the translation error of relative poses ``delta_m`` (100 m) of path apart, in
  metres per ``delta_m`` (so at 100 m, metres per 100 m = percent). All pairs (every pose starts
  one, evo's ``all_pairs``, within evo's 10 % path tolerance) and pairs chosen on the truth's
  path (``pairs_from_reference``: a jittering estimate, e.g. while standing still, must not
  lengthen the path the pairs are cut from).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from evo.core import metrics, sync
from evo.core.trajectory import PoseTrajectory3D
from evo.tools import file_interface

RPE_DELTA_M = 100.0
MAX_TIME_DIFF_S = 0.01


@dataclass(frozen=True)
class VoScore:
    ape_rmse_m: float          # position RMSE over the associated poses, no alignment
    rpe_rmse_m: float          # translation RMSE of relative poses rpe_delta_m apart
    rpe_delta_m: float
    rpe_pairs: int             # relative poses that entered the RPE
    poses: int                 # associated poses
    path_m: float              # path length of the associated truth

    @property
    def rpe_percent(self) -> float:
        """The RPE as a percentage of the distance it is measured over."""
        return 100 * self.rpe_rmse_m / self.rpe_delta_m


def pose_matrix(pose) -> np.ndarray:
    """A ``geometry_msgs/Pose`` as a 4x4 matrix (scipy's quaternion convention: x y z w)."""
    from scipy.spatial.transform import Rotation
    q, p = pose.orientation, pose.position
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def trajectory(source) -> PoseTrajectory3D:
    """A TUM file (path), ``(stamps_s [N], poses [N x 4 x 4])`` or a PoseTrajectory3D."""
    if isinstance(source, PoseTrajectory3D):
        return source
    if isinstance(source, (str, Path)):
        return file_interface.read_tum_trajectory_file(str(source))
    stamps, poses = source
    return PoseTrajectory3D(timestamps=np.asarray(stamps, np.float64),
                            poses_se3=list(np.asarray(poses, np.float64)))


def score(truth, estimate, rpe_delta_m: float = RPE_DELTA_M,
          max_time_diff_s: float = MAX_TIME_DIFF_S) -> VoScore:
    """APE and RPE (module docstring) of ``estimate`` against ``truth`` (either as
    :func:`trajectory` takes). The RPE needs a truth path longer than ``rpe_delta_m``."""
    ref, est = sync.associate_trajectories(trajectory(truth), trajectory(estimate),
                                           max_diff=max_time_diff_s)
    translation = metrics.PoseRelation.translation_part
    ape = metrics.APE(translation)
    ape.process_data((ref, est))
    rpe = metrics.RPE(translation, delta=rpe_delta_m, delta_unit=metrics.Unit.meters,
                      all_pairs=True, pairs_from_reference=True)
    rpe.process_data((ref, est))
    rmse = metrics.StatisticsType.rmse
    return VoScore(ape_rmse_m=ape.get_statistic(rmse), rpe_rmse_m=rpe.get_statistic(rmse),
                   rpe_delta_m=rpe_delta_m, rpe_pairs=len(rpe.error), poses=ref.num_poses,
                   path_m=float(ref.path_length))
