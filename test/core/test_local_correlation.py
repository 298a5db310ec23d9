"""Local correlation: the PyTorch path vs a naive materialising reference and the official
2.0.1 fallback, its memory bound, and the impl dispatch."""
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from romav2_core import local_correlation as lc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from local_corr_cases import CASES, case_id  # noqa: E402
from official_oracle import import_official  # noqa: E402


def naive_local_correlation(f_A, f_B, warp, radius):
    """Materialising reference: one grid_sample of all K windows, then an einsum.

    Offsets from the closed form ((-2r + 2 ix) / W, (-2r + 2 iy) / H) with f_A's W, H and
    k = iy (2r+1) + ix, independent of the package's linspace construction.
    """
    B, C, H, W = f_A.shape
    n = 2 * radius + 1
    i = torch.arange(n, dtype=torch.float32)
    ox = ((-2 * radius + 2 * i) / W)[None, :].expand(n, n)  # [iy, ix]
    oy = ((-2 * radius + 2 * i) / H)[:, None].expand(n, n)
    offsets = torch.stack((ox, oy), -1).reshape(n * n, 2)
    coords = (warp[:, :, :, None, :] + offsets).reshape(B, H, W * n * n, 2)
    windows = F.grid_sample(f_B, coords, mode='bilinear', padding_mode='zeros',
                            align_corners=False).reshape(B, C, H, W, n * n)
    return torch.einsum('bchw,bchwk->bkhw', f_A, windows) / C ** 0.5


def _inputs(B, C, H, W, Hb, Wb, seed=0):
    g = torch.Generator().manual_seed(seed)
    f_A = torch.randn(B, C, H, W, generator=g)
    f_B = torch.randn(B, C, Hb, Wb, generator=g)
    # Range +-1.4: a good share of the windows falls (partly) outside B (zero padding).
    warp = torch.rand(B, H, W, 2, generator=g) * 2.8 - 1.4
    return f_A, f_B, warp


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_torch_path_matches_naive_reference(case):
    B, C, H, W, Hb, Wb, r = case
    f_A, f_B, warp = _inputs(B, C, H, W, Hb, Wb)
    corr = lc.local_correlation(f_A, f_B, warp, r, impl='torch')
    assert corr.shape == (B, (2 * r + 1) ** 2, H, W) and corr.dtype == torch.float32
    torch.testing.assert_close(corr, naive_local_correlation(f_A, f_B, warp, r),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_torch_path_matches_official(case):
    official = import_official().local_correlation
    assert official.local_corr is None, 'expected the official native torch fallback'
    B, C, H, W, Hb, Wb, r = case
    f_A, f_B, warp = _inputs(B, C, H, W, Hb, Wb, seed=1)
    expected = official.local_correlation(f_A, f_B, r, warp, scale_factor=None)
    # Sample coordinates and grid_sample values are bit-identical; only the fp32 channel
    # summation order differs (the official sums a [C x H x W x K] tensor), ~1e-7.
    torch.testing.assert_close(lc.local_correlation(f_A, f_B, warp, r, impl='torch'),
                               expected, rtol=0, atol=1e-5)


def test_window_offsets_match_official_bits():
    # The official builds the same offsets inline; compare with its formula on one case.
    r, H, W = 3, 7, 9
    ys = torch.linspace(-2 * r / H, 2 * r / H, 2 * r + 1)
    xs = torch.linspace(-2 * r / W, 2 * r / W, 2 * r + 1)
    gy, gx = torch.meshgrid(ys, xs, indexing='ij')
    expected = torch.stack((gx, gy), -1).reshape(-1, 2)
    assert torch.equal(lc.window_offsets(r, H, W), expected)


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_torch_path_never_materialises_the_window_tensor():
    # Every tensor the path creates (outputs of all aten ops, incl. temporaries) must be at
    # most B*H*W*max(K, C) elements; the naive reference needs B*C*H*W*K.
    B, C, H, W, r = 2, 24, 12, 10, 3
    K = (2 * r + 1) ** 2
    f_A, f_B, warp = _inputs(B, C, H, W, H, W)
    with _LargestOutput() as ours:
        lc.local_correlation(f_A, f_B, warp, r, impl='torch')
    assert ours.largest <= B * H * W * max(K, C)
    with _LargestOutput() as naive:  # the probe does see a materialising implementation
        naive_local_correlation(f_A, f_B, warp, r)
    assert naive.largest >= B * C * H * W * K


def test_cuda_impl_on_cpu_is_a_clear_error():
    f_A, f_B, warp = _inputs(1, 4, 3, 3, 3, 3)
    with pytest.raises(ValueError, match="'cuda' needs CUDA tensors"):
        lc.local_correlation(f_A, f_B, warp, 1, impl='cuda')
    with pytest.raises(ValueError, match='one of'):
        lc.local_correlation(f_A, f_B, warp, 1, impl='triton')


def test_auto_on_cpu_uses_torch_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(lc, '_announced', set())
    f_A, f_B, warp = _inputs(1, 4, 3, 3, 3, 3)
    with caplog.at_level(logging.INFO, logger='romav2_core'):
        assert lc.resolve_impl('auto', f_A.device) == 'torch'
        lc.local_correlation(f_A, f_B, warp, 1)
        lc.local_correlation(f_A, f_B, warp, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == 'romav2_core']
    assert lines == ['local correlation: using the torch path (auto: tensors on cpu)']


def test_shape_errors():
    f_A, f_B, warp = _inputs(2, 4, 3, 5, 3, 5)
    with pytest.raises(ValueError, match='warp'):
        lc.local_correlation(f_A, f_B, warp[:, :, :4], 1, impl='torch')
    with pytest.raises(ValueError, match='f_B'):
        lc.local_correlation(f_A, f_B[:, :3], warp, 1, impl='torch')


@pytest.mark.gpu
def test_cuda_paths_match_torch_path():
    # On a CUDA machine: 'auto' (fused kernel when cuda_ext builds, else torch) and the torch
    # path on the GPU both match the CPU torch path.
    B, C, H, W, Hb, Wb, r = 2, 48, 9, 13, 9, 13, 3
    f_A, f_B, warp = _inputs(B, C, H, W, Hb, Wb)
    expected = lc.local_correlation(f_A, f_B, warp, r, impl='torch')
    cuda = [t.cuda() for t in (f_A, f_B, warp)]
    for impl in ('torch', 'auto'):
        torch.testing.assert_close(lc.local_correlation(*cuda, r, impl=impl).cpu(), expected,
                                   rtol=0, atol=1e-5)
