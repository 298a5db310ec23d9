"""test/vo_eval.py: evo's APE / RPE on toy trajectories whose errors are known by hand, from
arrays, from TUM files written by the replay's writer, and through the evo_ape / evo_rpe
command lines the README shows (headless).

Toys: the truth drives straight along x at 1 m a frame (300 m, 0.1 s a frame). Estimate 1
has a 2 % scale error: the error at frame k is 0.02 k. Estimate 2 turns by DELTA rad a metre
(a heading drift): after d metres from any pose its chord, in that pose's frame, is
``(C_d, S_d)`` with the closed forms of ``sum cos(m DELTA)``, ``sum sin(m DELTA)``. The RPE pairs
are every pose i with the truth pose 100 m further (evo's all pairs); near the end evo also
accepts the farthest pose when it is within its 10 % path tolerance (90-99 m), which the
hand sums include.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vo_eval
from romav2_core.pose import rotation_to_quaternion
from romav2_core.trajectory import write_tum

N = 300                                   # metres = frames
SCALE_ERROR = 0.02
DELTA = 2e-3                              # rad of heading drift a metre
STAMPS = 1000.0 + 0.1 * np.arange(N + 1)


def poses(positions, headings=None):
    T = np.tile(np.eye(4), (len(positions), 1, 1))
    T[:, :3, 3] = positions
    if headings is not None:
        c, s = np.cos(headings), np.sin(headings)
        T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = c, -s, s, c
    return T


def chord(d):
    """``(sum_{m<d} cos(m DELTA), sum_{m<d} sin(m DELTA))``, closed form."""
    r = np.sin(d * DELTA / 2) / np.sin(DELTA / 2)
    return r * np.cos((d - 1) * DELTA / 2), r * np.sin((d - 1) * DELTA / 2)


K = np.arange(N + 1)
TRUTH = poses(np.c_[K, np.zeros((N + 1, 2))].astype(float))
SCALED = poses(np.c_[(1 + SCALE_ERROR) * K, np.zeros((N + 1, 2))])
DRIFTING = poses(np.c_[np.array(chord(K)).T, np.zeros(N + 1)], headings=K * DELTA)
#: path lengths (m) of evo's RPE pairs: 100 m from every start that has one, then the
#: tail accepted within 10 %: 99, 98, ..., 90 m
PAIR_LENGTHS = np.r_[np.full(N - 100 + 1, 100), np.arange(99, 89, -1)]


def test_scale_error_ape_and_rpe_by_hand():
    s = vo_eval.score((STAMPS, TRUTH), (STAMPS, SCALED))
    assert s.poses == N + 1 and s.path_m == pytest.approx(N)
    # sum_{k<=N} (0.02 k)^2 / (N + 1) = 0.02^2 N (2N + 1) / 6
    assert s.ape_rmse_m == pytest.approx(SCALE_ERROR * np.sqrt(N * (2 * N + 1) / 6), rel=1e-12)
    assert s.rpe_pairs == len(PAIR_LENGTHS)
    assert s.rpe_rmse_m == pytest.approx(SCALE_ERROR * np.sqrt(np.mean(PAIR_LENGTHS ** 2)),
                                         rel=1e-12)
    assert s.rpe_percent == pytest.approx(100 * s.rpe_rmse_m / 100)


def test_heading_drift_ape_and_rpe_by_hand():
    s = vo_eval.score((STAMPS, TRUTH), (STAMPS, DRIFTING))
    c, sn = chord(K)
    assert s.ape_rmse_m == pytest.approx(np.sqrt(np.mean((c - K) ** 2 + sn ** 2)), rel=1e-9)
    # relative error of a pair d metres long: (C_d - d, S_d), whatever pose it starts at
    c, sn = chord(PAIR_LENGTHS)
    assert s.rpe_rmse_m == pytest.approx(np.sqrt(np.mean((c - PAIR_LENGTHS) ** 2 + sn ** 2)),
                                         rel=1e-9)


def test_missing_estimate_frames_are_left_out():
    """A covered lens: no odometry for frames 150-152; the rest is associated by stamp."""
    kept = np.setdiff1d(K, [150, 151, 152])
    s = vo_eval.score((STAMPS, TRUTH), (STAMPS[kept], SCALED[kept]))
    assert s.poses == N + 1 - 3
    assert s.ape_rmse_m == pytest.approx(SCALE_ERROR * np.sqrt(np.mean(kept ** 2.0)), rel=1e-12)


def write(path, T):
    write_tum(path, STAMPS, T[:, :3, 3], [rotation_to_quaternion(R) for R in T[:, :3, :3]])
    return path


@pytest.fixture
def tum_files(tmp_path):
    return (write(tmp_path / 'gt.txt', TRUTH), write(tmp_path / 'est.txt', DRIFTING))


def test_tum_files_give_the_same_scores(tum_files):
    from_files = vo_eval.score(*tum_files)
    from_arrays = vo_eval.score((STAMPS, TRUTH), (STAMPS, DRIFTING))
    # the TUM writer keeps 9 decimals (1e-9 m, 1e-9 of a quaternion over ~300 m)
    assert from_files.ape_rmse_m == pytest.approx(from_arrays.ape_rmse_m, abs=1e-6)
    assert from_files.rpe_rmse_m == pytest.approx(from_arrays.rpe_rmse_m, abs=1e-6)
    assert from_files.rpe_pairs == from_arrays.rpe_pairs


#: The command lines of the README (run from the folder of the two files).
APE_COMMAND = ['evo_ape', 'tum', 'gt.txt', 'est.txt']
RPE_COMMAND = ['evo_rpe', 'tum', 'gt.txt', 'est.txt', '--delta', '100', '--delta_unit', 'm',
               '--all_pairs', '--pairs_from_reference']


@pytest.mark.parametrize('command, field', [(APE_COMMAND, 'ape_rmse_m'),
                                            (RPE_COMMAND, 'rpe_rmse_m')])
def test_readme_command_lines_run_headless_and_agree(tum_files, command, field):
    exe = Path(sys.executable).parent / command[0]
    env = dict(os.environ, MPLBACKEND='Agg')
    env.pop('DISPLAY', None)
    out = subprocess.run([str(exe), *command[1:]], cwd=tum_files[0].parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rmse = float(re.search(r'^\s*rmse\s+(\S+)$', out.stdout, re.M).group(1))
    # evo prints 6 decimals
    assert rmse == pytest.approx(getattr(vo_eval.score(*tum_files), field), abs=1e-6)
