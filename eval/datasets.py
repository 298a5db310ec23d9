"""Real image pairs with ground truth, installable offline (see /work/shared/docs/real-data.md).

Every loader returns ``(pairs, skipped_reason)``: a list of :class:`Pair` or, when its files are
absent, an empty list and the reason (what to install).

Conventions (as ``romav2_core.geometry``): pixels are OpenCV pixels (centres at integers);
A is the image the warp is indexed by, B the other one. ``gt_warp[v, u]`` is the position in B
of A's pixel (u, v), NaN where unknown. The GT pose is that of camera A in camera B's frame,
``p_B = R p_A + t`` (``romav2_core.pose``), ``t`` a unit direction.

Datasets:

* ``motorcycle``: Middlebury 2014 Motorcycle, 1/4 res (scikit-image wheel). Dense disparity d,
  ``x_B = x_A - d``, y unchanged; invalid GT is +inf. Calibrated: R = I, t = (-1, 0, 0).
* ``aloe``: Middlebury 2006 Aloe (Debian ``opencv-doc``). Disparity PNG in full-resolution
  pixels (scale 1, uint8), 0 = unknown. No calibration: no pose.
* ``graffiti``: Oxford Graffiti 1 -> 3 (``opencv-doc``), homography ``H13`` -> dense GT warp
  (where it lands inside B). No pose.
* ``chessboard``: 13 stereo pairs of a fixed rig (``opencv-doc``); GT = the 54 sub-pixel
  chessboard corners in both images (sparse); pose from our ``cv2.stereoCalibrate`` on all pairs
  (R, T of the right camera; 5-parameter distortion).
* ``oakd``: 12 rectified OAK-D pairs (PyPI ``stereodemo==0.7``, installed ``--no-deps``) with
  calibration; no disparity GT; R = I, t = (-1, 0, 0); correct matches keep y.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

_OPENCV_DOC_DATA = 'usr/share/doc/opencv-doc/examples/data'
# OPENCV_SAMPLES_DATA_PATH, else the system-wide package, else the copy scripts/setup_env.sh
# unpacks into data/ from the apt cache's .deb (offline machines where it is not installed).
_OPENCV_CANDIDATES = [Path('/') / _OPENCV_DOC_DATA,
                      Path(__file__).resolve().parents[1] / 'data' / 'opencv-doc' / _OPENCV_DOC_DATA]
OPENCV_DATA = Path(os.environ['OPENCV_SAMPLES_DATA_PATH']) \
    if os.environ.get('OPENCV_SAMPLES_DATA_PATH') \
    else next((p for p in _OPENCV_CANDIDATES if p.is_dir()), _OPENCV_CANDIDATES[0])
NO_OPENCV_DOC = (f'{OPENCV_DATA} not found: apt-get install -y opencv-doc (or apt-get download '
                 'opencv-doc && dpkg-deb -x opencv-doc_*.deb DIR and set '
                 'OPENCV_SAMPLES_DATA_PATH=DIR/usr/share/doc/opencv-doc/examples/data)')
CHESSBOARD = (9, 6)
CHESSBOARD_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)


@dataclass
class Pair:
    dataset: str
    name: str
    img_A: np.ndarray                      # H_A x W_A x 3 uint8 RGB
    img_B: np.ndarray                      # H_B x W_B x 3 uint8 RGB
    stereo_rectified: bool = False         # a rectified left(A)/right(B) pair: SGBM applies
    gt_warp: Optional[np.ndarray] = None   # H_A x W_A x 2 float, NaN = unknown
    gt_points: Optional[tuple[np.ndarray, np.ndarray]] = None   # (N x 2 in A, N x 2 in B)
    K_A: Optional[np.ndarray] = None
    K_B: Optional[np.ndarray] = None
    D_A: Optional[np.ndarray] = None
    D_B: Optional[np.ndarray] = None
    R: Optional[np.ndarray] = None         # GT pose of A in B
    t: Optional[np.ndarray] = None
    notes: dict = field(default_factory=dict)

    @property
    def has_pose(self) -> bool:
        return self.R is not None and self.K_A is not None


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _K(f, cx, cy, fy=None) -> np.ndarray:
    return np.array([[f, 0, cx], [0, f if fy is None else fy, cy], [0, 0, 1]], np.float64)


def warp_from_disparity(disp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rectified stereo GT: ``x_B = x_A - d``, ``y_B = y_A``; NaN where not ``valid``."""
    h, w = disp.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = np.stack([u - np.where(valid, disp, np.nan), v], axis=-1)
    warp[~valid] = np.nan
    return warp


def warp_from_homography(H: np.ndarray, hw_A, hw_B) -> np.ndarray:
    """Dense GT ``x_B ~ H x_A`` for every pixel of A; NaN where it lands outside B."""
    h, w = hw_A
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([u, v, np.ones_like(u)], -1) @ np.asarray(H, np.float64).T
    warp = p[..., :2] / p[..., 2:3]
    hb, wb = hw_B
    outside = (warp[..., 0] < -0.5) | (warp[..., 0] > wb - 0.5) | (warp[..., 1] < -0.5) | \
        (warp[..., 1] > hb - 0.5) | (p[..., 2] <= 0)
    warp[outside] = np.nan
    return warp


# ----------------------------------------------------------------------------- loaders
def load_motorcycle():
    try:
        from skimage import data
    except ImportError:
        return [], 'scikit-image not installed (pip install scikit-image==0.26.0)'
    left, right, disp = data.stereo_motorcycle()
    f, cx, cy, doffs = 994.978, 311.193, 254.877, 31.086
    disp = disp.astype(np.float64)
    pair = Pair('motorcycle', 'motorcycle', np.ascontiguousarray(left),
                np.ascontiguousarray(right), stereo_rectified=True,
                gt_warp=warp_from_disparity(disp, np.isfinite(disp)),
                K_A=_K(f, cx, cy), K_B=_K(f, cx + doffs, cy), R=np.eye(3),
                t=np.array([-1.0, 0.0, 0.0]), notes={'sgbm_num_disparities': 64})
    return [pair], None


def load_aloe():
    paths = [OPENCV_DATA / n for n in ('aloeL.jpg', 'aloeR.jpg', 'aloeGT.png')]
    if not all(p.exists() for p in paths):
        return [], NO_OPENCV_DOC
    gt = cv2.imread(str(paths[2]), cv2.IMREAD_UNCHANGED).astype(np.float64)  # px, scale 1
    pair = Pair('aloe', 'aloe', _rgb(paths[0]), _rgb(paths[1]), stereo_rectified=True,
                gt_warp=warp_from_disparity(gt, gt > 0),
                notes={'sgbm_num_disparities': 224, 'gt': 'integer disparity, JPEG images'})
    return [pair], None


def load_graffiti():
    paths = [OPENCV_DATA / n for n in ('graf1.png', 'graf3.png', 'H1to3p.xml')]
    if not all(p.exists() for p in paths):
        return [], NO_OPENCV_DOC
    fs = cv2.FileStorage(str(paths[2]), cv2.FILE_STORAGE_READ)  # keep it alive (OpenCV 5)
    H = fs.getNode('H13').mat()
    fs.release()
    a, b = _rgb(paths[0]), _rgb(paths[1])
    pair = Pair('graffiti', 'graf1->graf3', a, b,
                gt_warp=warp_from_homography(H, a.shape[:2], b.shape[:2]),
                notes={'H': H.tolist()})
    return [pair], None


def _corners(gray: np.ndarray) -> Optional[np.ndarray]:
    ok, c = cv2.findChessboardCorners(gray, CHESSBOARD)
    if not ok:
        return None
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
    return cv2.cornerSubPix(gray, c, (11, 11), (-1, -1), crit).reshape(-1, 2)


def load_chessboard():
    files = [(OPENCV_DATA / f'left{i:02d}.jpg', OPENCV_DATA / f'right{i:02d}.jpg')
             for i in CHESSBOARD_IDS]
    if not all(p.exists() for pr in files for p in pr):
        return [], NO_OPENCV_DOC
    imgs, corners = [], []
    for lp, rp in files:
        a, b = _rgb(lp), _rgb(rp)
        ca, cb = (_corners(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)) for x in (a, b))
        if ca is None or cb is None:
            continue
        # The 9x6 board's detected order can be reversed between the views: keep the order
        # that pairs nearby corners.
        if np.abs(ca - cb[::-1]).sum() < np.abs(ca - cb).sum():
            cb = cb[::-1].copy()
        imgs.append((lp.stem, a, b))
        corners.append((ca, cb))
    if len(imgs) < 3:
        return [], 'chessboard corners found in fewer than 3 pairs'
    obj = np.zeros((CHESSBOARD[0] * CHESSBOARD[1], 3), np.float32)
    obj[:, :2] = np.mgrid[0:CHESSBOARD[0], 0:CHESSBOARD[1]].T.reshape(-1, 2)
    size = imgs[0][1].shape[1::-1]
    objs = [obj] * len(corners)
    ca_list = [c[0].astype(np.float32) for c in corners]
    cb_list = [c[1].astype(np.float32) for c in corners]
    _, K_l, D_l, _, _ = cv2.calibrateCamera(objs, ca_list, size, None, None)
    _, K_r, D_r, _, _ = cv2.calibrateCamera(objs, cb_list, size, None, None)
    rms, K_l, D_l, K_r, D_r, R, T, _, _ = cv2.stereoCalibrate(
        objs, ca_list, cb_list, K_l, D_l, K_r, D_r, size, flags=cv2.CALIB_FIX_INTRINSIC)
    t = T.ravel() / np.linalg.norm(T)
    pairs = [Pair('chessboard', name, a, b, gt_points=(ca.astype(np.float64),
                                                       cb.astype(np.float64)),
                  K_A=K_l, K_B=K_r, D_A=D_l.ravel(), D_B=D_r.ravel(), R=R, t=t,
                  notes={'stereo_calibration_rms_px': float(rms)})
             for (name, a, b), (ca, cb) in zip(imgs, corners)]
    return pairs, None


def load_oakd():
    spec = importlib.util.find_spec('stereodemo')  # never import it (it imports open3d)
    if spec is None or not spec.submodule_search_locations:
        return [], 'stereodemo not installed (pip install --no-deps stereodemo==0.7)'
    d = Path(list(spec.submodule_search_locations)[0]) / 'datasets' / 'oak-d'
    cal_path = d / 'stereodemo_calibration.json'
    if not cal_path.exists():
        return [], f'{cal_path} missing'
    cal = json.loads(cal_path.read_text())
    pairs = []
    for lp in sorted(d.glob('*_left.png')):
        rp = lp.with_name(lp.name.replace('_left', '_right'))
        a, b = _rgb(lp), _rgb(rp)
        pairs.append(Pair('oakd', lp.stem.replace('_left', ''), a, b, stereo_rectified=True,
                          K_A=_K(cal['fx'], cal['cx0'], cal['cy'], cal.get('fy', cal['fx'])),
                          K_B=_K(cal['fx'], cal['cx1'], cal['cy'], cal.get('fy', cal['fx'])),
                          R=np.eye(3), t=np.array([-1.0, 0.0, 0.0]),
                          notes={'sgbm_num_disparities': 64,
                                 'gt': 'pose and epipolar rows only'}))
    return pairs, None


LOADERS: dict[str, Callable] = {'motorcycle': load_motorcycle, 'aloe': load_aloe,
                                'graffiti': load_graffiti, 'chessboard': load_chessboard,
                                'oakd': load_oakd}


# ---------------------------------------------------------------------------- resizing
def _scale_K(K, s):
    if K is None:
        return None
    K = K.copy()
    K[0, 0] *= s
    K[1, 1] *= s
    K[0, 2] = (K[0, 2] + 0.5) * s - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * s - 0.5
    return K


def downscale(pair: Pair, max_size: int) -> Pair:
    """Shrink both images (same factor) so the longer side is at most ``max_size``; the GT
    follows (dense warp: nearest GT pixel, pixel-centre convention; points; K). Distorted
    cameras (``D``) are left alone: their distortion is in original pixels."""
    longest = max(*pair.img_A.shape[:2], *pair.img_B.shape[:2])
    if max_size <= 0 or longest <= max_size or pair.D_A is not None or pair.D_B is not None:
        return pair
    s = max_size / longest

    def resize(img):
        h, w = img.shape[:2]
        return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                          interpolation=cv2.INTER_AREA)
    a, b = resize(pair.img_A), resize(pair.img_B)
    sxa, sya = a.shape[1] / pair.img_A.shape[1], a.shape[0] / pair.img_A.shape[0]
    sxb, syb = b.shape[1] / pair.img_B.shape[1], b.shape[0] / pair.img_B.shape[0]
    gt = None
    if pair.gt_warp is not None:
        v, u = np.mgrid[0:a.shape[0], 0:a.shape[1]]
        src_u = np.clip(np.round((u + 0.5) / sxa - 0.5), 0, pair.img_A.shape[1] - 1).astype(int)
        src_v = np.clip(np.round((v + 0.5) / sya - 0.5), 0, pair.img_A.shape[0] - 1).astype(int)
        w = pair.gt_warp[src_v, src_u]
        # the GT at the nearest source pixel, moved by the sub-pixel offset of the new centre
        # (exact for locally translational GT such as disparity)
        du = (u + 0.5) / sxa - 0.5 - src_u
        dv = (v + 0.5) / sya - 0.5 - src_v
        gt = np.stack([(w[..., 0] + du + 0.5) * sxb - 0.5, (w[..., 1] + dv + 0.5) * syb - 0.5],
                      -1)
    pts = None
    if pair.gt_points is not None:
        pa, pb = pair.gt_points
        pts = ((pa + 0.5) * [sxa, sya] - 0.5, (pb + 0.5) * [sxb, syb] - 0.5)
    return replace(pair, img_A=a, img_B=b, gt_warp=gt, gt_points=pts,
                   K_A=_scale_K(pair.K_A, sxa), K_B=_scale_K(pair.K_B, sxb),
                   notes={**pair.notes, 'downscaled_by': s})


def load(names: list[str], max_size: int = 0, max_pairs: int = 0):
    """``{name: pairs}`` for the datasets present and ``{name: reason}`` for the skipped ones."""
    present, skipped = {}, {}
    for name in names:
        if name not in LOADERS:
            raise ValueError(f'unknown dataset {name!r}; one of {sorted(LOADERS)}')
        try:
            pairs, reason = LOADERS[name]()
        except Exception as exc:  # a broken install is reported, not fatal
            pairs, reason = [], f'failed to load: {type(exc).__name__}: {exc}'
        if reason:
            skipped[name] = reason
            continue
        if max_pairs > 0:
            pairs = pairs[:max_pairs]
        present[name] = [downscale(p, max_size) for p in pairs]
    return present, skipped
