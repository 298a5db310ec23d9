"""Trajectories of a camera: the TUM text format and a top-view picture (no ROS, no plotting
library: OpenCV draws it).

TUM format (as evaluation tools such as ``evo`` read it): one line per pose,
``timestamp tx ty tz qx qy qz qw``, the timestamp in seconds, the pose of the camera in the
trajectory's fixed frame. For a camera optical frame (x right, y down, z forward) the top
view is the x-z plane: x to the right, z (forward) up the picture.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: Colours (BGR for OpenCV) of the curves, in order.
COLOURS = [(200, 80, 20), (40, 160, 40), (30, 30, 220), (150, 50, 150)]


def write_tum(path: str | Path, stamps_s, positions, quaternions_xyzw) -> None:
    """``[N]`` seconds, ``[N x 3]`` m, ``[N x 4]`` (x, y, z, w) -> a TUM trajectory file."""
    rows = np.c_[np.asarray(stamps_s, np.float64), np.asarray(positions, np.float64),
                 np.asarray(quaternions_xyzw, np.float64)]
    with open(path, 'w', encoding='utf-8') as f:
        f.write('# timestamp tx ty tz qx qy qz qw\n')
        for row in rows:
            f.write(f'{row[0]:.9f} ' + ' '.join(f'{v:.9f}' for v in row[1:]) + '\n')


def read_tum(path: str | Path) -> np.ndarray:
    """``[N x 8]``: the rows of a TUM file."""
    return np.loadtxt(path, comments='#', ndmin=2)


def plot_top_view(path: str | Path, curves: dict, size: int = 640) -> None:
    """PNG of ``{label: [N x 3] positions}`` seen from above (x right, z up the picture),
    one scale for all, with a 1 m scale bar; the start of each curve is a circle."""
    canvas = np.full((size, size, 3), 255, np.uint8)
    pts = {k: np.asarray(v, np.float64)[:, [0, 2]] for k, v in curves.items() if len(v)}
    allp = np.concatenate(list(pts.values()))
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    span = max(float((hi - lo).max()), 1e-3)
    margin = 60
    scale = (size - 2 * margin) / span

    def px(p):
        x = margin + (p[:, 0] - lo[0]) * scale
        y = size - margin - (p[:, 1] - lo[1]) * scale
        return np.stack([x, y], -1).round().astype(np.int32)

    for i, (label, p) in enumerate(pts.items()):
        colour = COLOURS[i % len(COLOURS)]
        q = px(p)
        cv2.polylines(canvas, [q.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        cv2.circle(canvas, tuple(int(v) for v in q[0]), 6, colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, label, (margin, 28 + 24 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    colour, 2, cv2.LINE_AA)
    bar = int(round(scale))
    if bar < size - 2 * margin:
        cv2.line(canvas, (size - margin - bar, size - 25), (size - margin, size - 25),
                 (0, 0, 0), 2)
        cv2.putText(canvas, '1 m', (size - margin - bar, size - 32), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, 'top view: x right, z forward', (margin, size - 8),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)
