"""Node overhead: end-to-end latency of the installed ``romav2_node`` vs the raw model time.

Two processes on loopback: the node (``romav2_node``, ``mode:=stereo``,
``model_source:=random``, same setting/resolution/seed as the raw model) and this script, which
publishes a stereo pair (images + camera_info, one stamp) and waits until every output in
``--outputs`` has arrived for that stamp; latency = receipt of the last one - publish. Pairs are
sent one at a time (the next after the previous one's outputs), so nothing is dropped or queued.
After the node has stopped, the same pair is matched ``--pairs`` times in this process with
``RoMaV2.match`` (the raw model time). Overhead = median latency - median raw model time, in ms
and as a fraction of the latency. The node's own ``latency_model_ms_mean`` (from
/diagnostics) is reported too, with ``overhead_vs_node_model_ms`` = latency - that: the model
time inside the node, measured at the same moment (robust to a machine whose load changes).
The node's mean covers every pair it processed, the warm-up pairs included.

DDS must stay on this machine: the script refuses to run unless
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a non-default ROS_DOMAIN_ID are set, and should run
in a private network namespace holding only ``lo``:

    unshare --net bash -c 'ip link set lo up; export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \\
        ROS_DOMAIN_ID=44; .venv/bin/python bench/bench_node.py --smoke'

Both processes use the Fast DDS large-image profile (config/fastdds_large_images.xml).

    ... bench/bench_node.py --setting turbo --image-size 640 480 --pairs 5
    ... bench/bench_node.py --smoke      # CI: 64x96 model, 128x96 images, 1 pair, no warm-up
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / 'test' / 'ros'))

HOW_TO_RUN = ("run it inside a private network namespace with DDS confined to loopback:\n"
              "  unshare --net bash -c 'ip link set lo up; export "
              "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=44; "
              ".venv/bin/python bench/bench_node.py --smoke'")
OUTPUT_TYPES = ('warp', 'certainty', 'covariance', 'disparity', 'depth', 'depth_stddev',
                'points2', 'matches', 'relative_pose', 'relative_pose_info')
#: Every stereo output but the pictures and the pose (random weights may give no pose).
DENSE_OUTPUTS = ('warp', 'certainty', 'covariance', 'disparity', 'depth', 'depth_stddev',
                 'points2')


def check_environment() -> None:
    if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST' or \
            os.environ.get('ROS_DOMAIN_ID', '0') in ('', '0'):
        sys.exit('bench_node.py refuses to start DDS: ROS_AUTOMATIC_DISCOVERY_RANGE must be '
                 'LOCALHOST and ROS_DOMAIN_ID set to a non-default value (not 0);\n' + HOW_TO_RUN)


def stereo_pair(width: int, height: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A real rectified pair (Middlebury Motorcycle from scikit-image, resized) or, without
    scikit-image, a random texture shifted by 8 px. Returns (left, right, focal, baseline)."""
    import cv2
    try:
        from skimage import data
        left, right, _ = data.stereo_motorcycle()
        sx = width / left.shape[1]
        left, right = (cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA)
                       for im in (left, right))
        return np.ascontiguousarray(left), np.ascontiguousarray(right), 994.978 * sx, 0.193
    except ImportError:
        rng = np.random.default_rng(0)
        tex = (rng.random((height, width + 8, 3)) * 255).astype(np.uint8)
        return tex[:, 8:].copy(), tex[:, :-8].copy(), float(width), 0.1


def messages(left, right, focal, baseline, stamp):
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header
    from romav2_ros.image_conversion import numpy_to_imgmsg
    h, w = left.shape[:2]
    out = []
    for img, frame, tx in ((left, 'left_optical', 0.0), (right, 'right_optical', baseline)):
        header = Header(stamp=stamp, frame_id=frame)
        info = CameraInfo(header=header, height=h, width=w, distortion_model='plumb_bob')
        info.k = [focal, 0.0, (w - 1) / 2, 0.0, focal, (h - 1) / 2, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [focal, 0.0, (w - 1) / 2, -focal * tx, 0.0, focal, (h - 1) / 2, 0.0,
                  0.0, 0.0, 1.0, 0.0]
        info.d = [0.0] * 5
        out += [numpy_to_imgmsg(img, 'rgb8', header), info]
    return out  # left image, left info, right image, right info


def measure_node(args, left, right, focal, baseline, log: Path) -> dict:
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, Image
    import rclpy
    from node_harness import NodeProcess, Tester
    from romav2_ros.messages import output_type
    params = {'mode': 'stereo', 'model_source': 'random', 'random_seed': 0,
              'setting': args.setting, 'H_lr': args.size[0], 'W_lr': args.size[1],
              'H_hr': -1, 'W_hr': -1, 'device': args.device, 'precision': args.precision,
              'input_qos': 'reliable', 'output_qos': 'reliable', 'output_qos_depth': 10,
              'certainty_threshold': 0.0, 'viz_rate': 0.0, 'warmup': args.node_warmup}
    for key in ('matches_viz', 'warp_viz', 'covariance_viz'):
        params[f'publish_{key}'] = False
    node = NodeProcess(params, log)
    tester = Tester()
    arrivals: dict[str, dict] = {k: {} for k in args.outputs}
    try:
        qos = tester.reliable(10)
        for key in args.outputs:
            def cb(msg, key=key):
                arrivals[key][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = \
                    time.perf_counter()
            tester.node.create_subscription(output_type(key), f'/romav2_node/{key}', cb, qos)
        tester.record_diagnostics()
        topics = ('left/image_rect', 'left/camera_info', 'right/image_rect',
                  'right/camera_info')
        pubs = [tester.publisher(Image if 'image' in tp else CameraInfo, '/' + tp, qos)
                for tp in topics]
        t_start = time.perf_counter()
        tester.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs),
                          args.timeout, 'the node to subscribe (see ' + str(log) + ')')
        tester.wait_node_subscribers(args.outputs, timeout=args.timeout)
        startup = time.perf_counter() - t_start
        latencies = []
        for k in range(args.warmup_pairs + args.pairs):
            stamp = Time(sec=100 + k, nanosec=0)
            msgs = messages(left, right, focal, baseline, stamp)
            key = (stamp.sec, stamp.nanosec)
            t0 = time.perf_counter()
            for pub, msg in zip(pubs, msgs):
                pub.publish(msg)
            tester.spin_until(lambda: all(key in arrivals[o] for o in args.outputs),
                              args.timeout, f'outputs of pair {k}')
            if k >= args.warmup_pairs:
                latencies.append(max(arrivals[o][key] for o in args.outputs) - t0)
        tester.spin_for(1.2)  # one more /diagnostics period
        node_model_ms, stages = None, {}
        for arr in reversed(tester.diag):
            for st in arr.status:
                if st.name.endswith('processing'):
                    vals = {kv.key: kv.value for kv in st.values}
                    if 'latency_model_ms_mean' in vals:
                        node_model_ms = float(vals['latency_model_ms_mean'])
                        # where the node's own time goes (means over the last period)
                        stages = {k[len('latency_'):-len('_ms_mean')]: float(v)
                                  for k, v in vals.items() if k.endswith('_ms_mean')}
                        break
            if node_model_ms is not None:
                break
    finally:
        tester.close()
        rclpy.try_shutdown()
        rc = node.stop(signal.SIGINT)
    if rc != 0:
        raise RuntimeError(f'romav2_node exited with {rc}:\n{node.output()[-3000:]}')
    return {'latencies_s': latencies, 'median_latency_s': common.median(latencies),
            'node_startup_s': startup, 'node_latency_model_ms_mean': node_model_ms,
            'node_stage_ms_mean': stages}


def measure_model(args, left, right) -> dict:
    # The node's precision policy (not the official default: bf16 is emulated, and several
    # times slower, on AVX2-only CPUs, where the node's 'auto' runs fp32).
    model = common.build('ours', args.setting, args.device, H_lr=args.size[0],
                         W_lr=args.size[1], H_hr=None, W_hr=None,
                         **common.precision_overrides(args.precision, args.device))
    model.bidirectional = False
    times = common.timed(lambda: model.match(left, right), args.device, args.pairs,
                         warmup=args.warmup_pairs)
    return {'model_seconds': times, 'median_model_s': common.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--setting', default='turbo', choices=['turbo', 'fast', 'base'])
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                   help='model H_lr W_lr (default: the setting\'s)')
    p.add_argument('--image-size', type=int, nargs=2, metavar=('W', 'H'), default=[640, 480])
    p.add_argument('--pairs', type=int, default=5)
    p.add_argument('--warmup-pairs', type=int, default=1)
    p.add_argument('--outputs', nargs='+', default=list(DENSE_OUTPUTS), choices=OUTPUT_TYPES,
                   help='latency = until all of these arrived (pose outputs need weights '
                        'that give a pose: random weights may not)')
    p.add_argument('--no-node-warmup', dest='node_warmup', action='store_false',
                   help='node parameter warmup:=false')
    p.add_argument('--device', default='cpu')
    p.add_argument('--precision', default='auto', choices=['auto', 'bf16', 'fp16', 'fp32'],
                   help='the node parameter precision, used for the raw model time too')
    p.add_argument('--timeout', type=float, default=300.0)
    p.add_argument('--smoke', action='store_true',
                   help='tiny case for CI (64x96 model, 128x96 images, 1 pair, no warm-up)')
    args = p.parse_args()
    check_environment()
    if args.smoke:
        args.setting, args.size, args.image_size = 'turbo', [64, 96], [128, 96]
        args.pairs, args.warmup_pairs, args.node_warmup = 1, 0, False
    if args.size is None:
        from romav2_core.config import RoMaV2Config
        cfg = RoMaV2Config.from_setting(args.setting)
        args.size = [cfg.H_lr, cfg.W_lr]
    left, right, focal, baseline = stereo_pair(*args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        node = measure_node(args, left, right, focal, baseline, Path(tmp) / 'node.log')
    raw = measure_model(args, left, right)
    overhead = node['median_latency_s'] - raw['median_model_s']
    result = {'benchmark': 'node_overhead', 'command': ' '.join(['bench/bench_node.py',
                                                                 *sys.argv[1:]]),
              'machine': common.machine(), 'setting': args.setting,
              'model_size': args.size, 'image_size_wh': args.image_size,
              'device': args.device, 'precision': args.precision, 'outputs': args.outputs,
              'weights': 'seeded random (timing only; no accuracy meaning)',
              'transport': 'loopback, Fast DDS with config/fastdds_large_images.xml, '
                           'reliable QoS, ROS_DOMAIN_ID=' + os.environ['ROS_DOMAIN_ID'],
              'node': node, 'raw_model': raw,
              'overhead_ms': overhead * 1e3,
              'overhead_fraction_of_latency': overhead / node['median_latency_s']}
    if node['node_latency_model_ms_mean'] is not None:
        # the same difference with the model time the node measured itself (same process
        # and moment as the latency; robust to load changes between the two measurements)
        own = node['median_latency_s'] * 1e3 - node['node_latency_model_ms_mean']
        result['overhead_vs_node_model_ms'] = own
        result['overhead_vs_node_model_fraction'] = own / (node['median_latency_s'] * 1e3)
    common.report(result, f'node {args.setting} model {args.size[0]}x{args.size[1]}, images '
                          f'{args.image_size[0]}x{args.image_size[1]} on {args.device}: '
                          f'end-to-end {node["median_latency_s"] * 1e3:.0f} ms, raw model '
                          f'{raw["median_model_s"] * 1e3:.0f} ms, overhead '
                          f'{overhead * 1e3:.0f} ms '
                          f'({100 * overhead / node["median_latency_s"]:.0f} %)')


if __name__ == '__main__':
    main()
