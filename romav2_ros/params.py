"""The node's parameters: declarations with descriptors, validation, and the one mapping from
parameters to ``RoMaV2Config`` / ``PipelineConfig``.

Model and wiring parameters are read-only (set them at launch); thresholds, toggles and the
visualisation rate can change at runtime (``ros2 param set``). Ranges are in the descriptors
(``ros2 param describe``); choices and cross-field rules are checked by :func:`validate`, which
the node installs as its on-set callback, so a bad value is rejected with a reason both at
startup and at runtime.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from romav2_core.capacity import check_fits
from romav2_core.config import (COMPILE_MODES, LOCAL_CORR_IMPLS, PRECISIONS, SETTINGS,
                                RoMaV2Config)
from romav2_ros.image_conversion import MAX_IMAGE_PIXELS
from romav2_core.stereo import POINT_FRAMES
from romav2_ros.pipeline import MODES, OUTPUTS, PipelineConfig
from romav2_ros.static_tf import mount_from_parameter

QOS_CHOICES = ('sensor_data', 'reliable', 'system_default')


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    runtime: bool = False                       # changeable after startup
    choices: Optional[tuple] = None             # allowed strings
    range: Optional[tuple] = None               # (from, to[, step]) inclusive
    units: str = ''
    #: 'double_array' for a list parameter without a default (then ``default`` is None: unset)
    kind: Optional[str] = None


PARAMS: tuple[Param, ...] = (
    Param('mode', 'stereo', 'stereo: left -> right; sequential: frame t -> t-1; '
                            'stereo_odometry: both, metric odometry',
          choices=MODES),
    # --- model (RoMaV2Config fields, same names)
    Param('setting', 'base', 'RoMa v2 preset (resolution and refinement; see the README\'s '
                             'measured costs)', choices=tuple(SETTINGS)),
    Param('H_lr', 0, 'coarse model input height; 0 = the preset\'s', range=(0, 4096, 16),
          units='px'),
    Param('W_lr', 0, 'coarse model input width; 0 = the preset\'s', range=(0, 4096, 16),
          units='px'),
    Param('H_hr', 0, 'high-resolution refinement height (multiple of 16); 0 = preset, '
                     '-1 = no high-resolution pass', range=(-1, 4096), units='px'),
    Param('W_hr', 0, 'high-resolution refinement width (multiple of 16); 0 = preset, '
                     '-1 = no high-resolution pass', range=(-1, 4096), units='px'),
    Param('bidirectional', False, 'also predict B -> A; no output uses it, so it only costs '
                                  'time (kept for parity with the official presets)'),
    Param('precision', 'auto', 'bf16 / fp16: the official mixed precision with that autocast '
                               'dtype; fp32: all fp32; auto: bf16 where the device has native '
                               'bf16 math, else fp32', choices=PRECISIONS),
    Param('local_corr', 'auto', 'refiner local correlation implementation',
          choices=LOCAL_CORR_IMPLS),
    Param('compile', 'off', 'torch.compile mode of the model (compiled at warm-up on the '
                            'worker thread; cached on disk for restarts)', choices=COMPILE_MODES),
    Param('device', 'auto', 'torch device: auto (cuda if available), cpu, cuda, cuda:N'),
    Param('weights', '', 'path of the RoMa v2 checkpoint; empty = official download cache'),
    Param('model_source', 'pretrained', 'pretrained, random (seeded random weights), a '
                                        'registered matcher or package.module:factory'),
    Param('random_seed', 0, 'seed of model_source:=random', range=(0, 2 ** 31 - 1)),
    Param('warmup', True, 'run one dummy pair at startup (compilation, cuDNN autotune)'),
    Param('stage_nice', 5, 'nice levels the decode and host stage threads run below the model '
                           'stage (Linux), so the model gets a core as soon as the GPU is done; '
                           '0 = one priority', range=(0, 19)),
    # --- inputs
    Param('approximate_sync', False, 'approximate instead of exact stamp synchronisation'),
    Param('sync_slop', 0.01, 'approximate sync: largest stamp difference in a set',
          range=(0.0, 10.0), units='s'),
    Param('sync_queue_size', 10, 'pending messages per input of the synchroniser',
          range=(1, 1000)),
    Param('input_transport', 'raw', 'raw: sensor_msgs/Image; compressed: '
                                    '<topic>/compressed CompressedImage (jpeg/png)',
          choices=('raw', 'compressed')),
    Param('input_qos', 'sensor_data', 'QoS of the subscriptions', choices=QOS_CHOICES),
    Param('input_qos_depth', 5, 'history depth of the subscriptions', range=(1, 1000)),
    Param('output_qos', 'reliable', 'QoS of the publishers', choices=QOS_CHOICES),
    Param('output_qos_depth', 1, 'history depth of the publishers', range=(1, 1000)),
    # --- processing (runtime)
    Param('certainty_threshold', 0.05, 'below it warp/covariance/disparity are NaN and '
                                       'pixels are not sampled', runtime=True,
          range=(0.0, 1.0)),
    Param('max_image_pixels', MAX_IMAGE_PIXELS, 'larger input images are refused '
                                                '(bad_input.too_large)', range=(1, 2 ** 31 - 1),
          units='px'),
    Param('num_samples', 2000, 'matches sampled for ~/matches and the pose', runtime=True,
          range=(8, 100000)),
    Param('ransac_threshold_px', 1.0, 'essential-matrix inlier threshold', runtime=True,
          range=(0.01, 100.0), units='px'),
    Param('rectified', True, 'inputs are rectified (use camera_info P); false: undistort '
                             'with K, D and distortion_model', runtime=True),
    Param('max_stamp_jump', 5.0, 'a larger stamp gap (or a jump back) resets the sequence; '
                                 'must exceed the frame period', runtime=True,
          range=(0.001, 1e6), units='s'),
    Param('viz_rate', 2.0, 'largest rate of the *_viz topics; 0 = every processed pair',
          runtime=True, range=(0.0, 1000.0), units='Hz'),
    Param('viz_max_matches', 200, 'match lines drawn in ~/matches_viz', runtime=True,
          range=(1, 100000)),
    Param('points_organized', True, '~/points2: organised H x W cloud with NaN for invalid '
                                    'points (false: the valid points only, one row)',
          runtime=True),
    Param('points_stride', 1, '~/points2: keep every n-th row and column', runtime=True,
          range=(1, 64)),
    Param('points_frame', 'rectified', '~/points2: rectified = the frame the rectified '
                                       'images and ~/depth live in (as stereo_image_proc); '
                                       'optical = rotated by camera_info R^T into the '
                                       'physical optical frame', runtime=True,
          choices=POINT_FRAMES),
    Param('min_disparity', 0.0, 'smallest valid disparity (~/disparity min_disparity); below '
                                'it every stereo output is invalid', runtime=True,
          range=(-4096.0, 4096.0), units='px'),
    Param('max_disparity', 256.0, 'largest valid disparity (~/disparity max_disparity, a '
                                  'viewer\'s colour scale); above it every stereo output is '
                                  'invalid', runtime=True, range=(-4096.0, 4096.0),
          units='px'),
    Param('rectification_warn_px', 1.0, 'stereo: WARN in /diagnostics when the median '
                                        'vertical disparity of confident matches exceeds it',
          runtime=True, range=(0.0, 100.0), units='px'),
    Param('baseline_warn_deg', 2.0, 'stereo: WARN when the estimated baseline direction is '
                                    'further than this from the calibrated one',
          runtime=True, range=(0.0, 180.0), units='deg'),
    # --- stereo_odometry
    Param('odom_frame', 'odom', 'stereo_odometry: frame of ~/odometry and of the TF parent '
                                '(the left camera\'s pose at the start)'),
    Param('keyframe_overlap', 0.7, 'stereo_odometry: a frame whose covisibility with its '
                                   'keyframe (share of its cells matched into it, relative '
                                   'to the keyframe\'s stereo share) drops below this becomes '
                                   'the next keyframe', runtime=True, range=(0.0, 1.0)),
    Param('keyframe_flow', 0.1, 'stereo_odometry: a frame whose median image motion from its '
                                'keyframe exceeds this fraction of the image width becomes the '
                                'next keyframe', runtime=True, range=(0.0, 10.0)),
    Param('tracking_min_overlap', 0.2, 'stereo_odometry: below this covisibility a frame is '
                                       'not tracked (LOST) and never a keyframe', runtime=True,
          range=(0.0, 1.0)),
    Param('max_lost_frames', 5, 'stereo_odometry: lost frames in a row before a new '
                                'odometry segment starts (until then each frame tries the '
                                'last keyframe)', runtime=True, range=(0, 100000)),
    Param('base_frame', '', 'stereo_odometry: the robot body frame (e.g. base_link): '
                            '~/odometry and TF become odom_frame -> base_frame (REP 105) '
                            'through the camera mount; empty: the left camera\'s own odometry'),
    Param('base_to_camera', None, 'stereo_odometry with base_frame: pose of the left image\'s '
                                  'frame in base_frame, [x, y, z, roll, pitch, yaw] (m, rad; '
                                  'URDF <origin>) or [x, y, z, qx, qy, qz, qw]; unset: read '
                                  'from /tf_static', kind='double_array'),
    Param('publish_tf', False, 'stereo_odometry: broadcast odom_frame -> left camera frame on '
                               '/tf (needs tf2_msgs; the camera frame must have no other '
                               'parent in the TF tree)'),
) + tuple(Param(f'publish_{key}', True, f'publish ~/{key} (only computed while subscribed)',
                runtime=True) for key in OUTPUTS)

#: Parameters of the managed node only (``romav2_lifecycle_node``).
LIFECYCLE_PARAMS: tuple[Param, ...] = (
    Param('autostart', False, 'configure and activate at start (what launch files\' '
                              'lifecycle:=true sets); false: wait for a lifecycle manager'),
    Param('bond_heartbeat_period', 0.1, 'heartbeat period of the bond to a Nav2 lifecycle '
                                        'manager, formed at activation (needs the ROS package '
                                        'bond); 0.0 = no bond', range=(0.0, 1.0), units='s'),
)


def resolve_device(value: str) -> str:
    import torch
    if value == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return value


def qos_profile(kind: str, depth: int):
    """``sensor_data``: best effort, volatile (rclpy's SensorDataQoS) with ``depth``;
    ``reliable``: reliable, volatile; ``system_default``: the RMW's defaults."""
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                           qos_profile_system_default)
    if kind == 'system_default':
        return qos_profile_system_default
    reliability = ReliabilityPolicy.RELIABLE if kind == 'reliable' else \
        ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)

BY_NAME = {p.name: p for p in PARAMS + LIFECYCLE_PARAMS}
_DEVICE = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')


def descriptor(p: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    text = p.description + (f' [{p.units}]' if p.units else '')
    d = ParameterDescriptor(name=p.name, description=text, read_only=not p.runtime)
    if p.choices:
        d.additional_constraints = 'one of: ' + ', '.join(p.choices)
    if p.range is not None:
        lo, hi, *step = p.range
        if isinstance(p.default, bool):
            pass
        elif isinstance(p.default, int):
            d.integer_range = [IntegerRange(from_value=lo, to_value=hi,
                                            step=step[0] if step else 1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo),
                                                         to_value=float(hi), step=0.0)]
    return d


def declare(node, extra: tuple = ()) -> dict:
    """Declare every parameter (and ``extra`` ones) on ``node``; return ``{name: value}``
    (None for an unset list parameter)."""
    from rclpy.parameter import Parameter
    table = PARAMS + tuple(extra)
    node.declare_parameters('', [(p.name, Parameter.Type.DOUBLE_ARRAY if p.kind ==
                                  'double_array' else p.default, descriptor(p)) for p in table])
    values = {p.name: node.get_parameter_or(p.name).value for p in table}
    return {k: list(v) if v is not None and BY_NAME[k].kind else v for k, v in values.items()}


def check(name: str, value) -> Optional[str]:
    """Why ``value`` is not acceptable for parameter ``name`` (None when it is)."""
    p = BY_NAME.get(name)
    if p is None:
        return None  # use_sim_time and other built-ins
    if p.choices and value not in p.choices:
        return f'{name}={value!r}: must be one of {", ".join(p.choices)}'
    if p.range is not None and not isinstance(value, bool) and \
            not p.range[0] <= value <= p.range[1]:
        return f'{name}={value!r}: out of range [{p.range[0]}, {p.range[1]}]'
    if name == 'device' and not _DEVICE.match(value):
        return f'device={value!r}: auto, cpu, cuda or cuda:N'
    if name in ('H_hr', 'W_hr') and value > 0 and value % 16:
        return f'{name}={value}: must be a multiple of 16 (or 0 = preset, -1 = off)'
    if name == 'base_to_camera' and value is not None:
        try:
            mount_from_parameter(value)
        except ValueError as exc:
            return f'{name}: {exc}'
    return None


def validate(params, current: Optional[dict] = None):
    """On-set callback: reject the whole set with the first reason found; with the node's
    ``current`` values, also the combinations a processing config refuses (e.g.
    ``min_disparity`` above ``max_disparity``)."""
    from rcl_interfaces.msg import SetParametersResult
    for param in params:
        reason = check(param.name, param.value)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
    if current is not None:
        try:
            pipeline_config({**current, **{p.name: p.value for p in params}})
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
    return SetParametersResult(successful=True)


def model_config(values: dict) -> RoMaV2Config:
    """``RoMaV2Config`` from parameter values: the preset, then any explicit override."""
    overrides = {}
    for name in ('H_lr', 'W_lr'):
        if values[name] > 0:
            overrides[name] = values[name]
    hr = (values['H_hr'], values['W_hr'])
    if -1 in hr:
        overrides.update(H_hr=None, W_hr=None)
    else:
        overrides.update({k: v for k, v in zip(('H_hr', 'W_hr'), hr) if v > 0})
    # B -> A only when asked: no output uses it (the presets' bidirectional flag is ignored).
    overrides['bidirectional'] = values['bidirectional']
    # ~/certainty is the model's overlap probability in every setting: the mega1500 family's
    # threshold (overlap above 0.05 set to 1, a benchmark sampling quirk) is not applied.
    overrides['threshold'] = None
    cfg = RoMaV2Config.from_setting(values['setting'], local_corr=values['local_corr'],
                                    compile=values['compile'], **overrides)
    device = resolve_device(values['device'])
    check_fits(cfg.H_lr, cfg.W_lr, device)
    return cfg.with_precision(values['precision'], device)


def pipeline_config(values: dict) -> PipelineConfig:
    """``PipelineConfig`` from parameter values (same field names)."""
    fields = PipelineConfig.__dataclass_fields__
    return PipelineConfig(**{k: values[k] for k in fields if k in values},
                          seed=values['random_seed'])
