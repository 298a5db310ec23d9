"""cuda_ext: the fused local-correlation kernel.

Without a GPU (CI): the .cu is compiled with nvcc for sm_80/87/90 (and the torch binding with
g++), the kernel's per-output arithmetic is compiled by nvcc into a host library and checked
against grid_sample and the official 2.0.1 code, and the lazy loader reports a clear reason.
With a GPU (``gpu`` marker): the kernel against the PyTorch path, and a full model forward.
"""
import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
CU = REPO / 'cuda_ext' / 'local_corr.cu'
CPP = REPO / 'cuda_ext' / 'local_corr.cpp'
sys.path.insert(0, str(REPO / 'test'))

import romav2_cuda_ext as cuda_ext  # noqa: E402 (installed name of the cuda_ext/ folder)
from local_corr_cases import CASES, case_id  # noqa: E402

# Same macros as torch.utils.cpp_extension's nvcc builds (the kernel must compile under them).
TORCH_NVCC_FLAGS = ['-D__CUDA_NO_HALF_OPERATORS__', '-D__CUDA_NO_HALF_CONVERSIONS__',
                    '-D__CUDA_NO_BFLOAT16_CONVERSIONS__', '-D__CUDA_NO_HALF2_OPERATORS__',
                    '--expt-relaxed-constexpr']


def _nvcc():
    found = shutil.which('nvcc')
    if found:
        return found
    for cand in (os.environ.get('CUDA_HOME', ''), '/usr/local/cuda'):
        path = Path(cand) / 'bin' / 'nvcc' if cand else None
        if path and path.is_file():
            return str(path)
    return None


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason='nvcc not found (PATH, $CUDA_HOME/bin, '
                                                      '/usr/local/cuda/bin)')


def _run(cmd, cwd=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{" ".join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}'
    return proc


def random_inputs(B, C, H, W, Hb, Wb, dtype=torch.float32, device='cpu', seed=0):
    """Random features and a warp that reaches ~25 % beyond the image on every side."""
    g = torch.Generator().manual_seed(seed)
    f_A = torch.randn(B, C, H, W, generator=g)
    f_B = torch.randn(B, C, Hb, Wb, generator=g)
    warp = torch.rand(B, H, W, 2, generator=g) * 2.5 - 1.25
    warp[0, 0, 0] = torch.tensor([-1.0, 1.0])   # exactly on the border
    warp[0, -1, -1] = torch.tensor([5.0, -7.0])  # far outside: all zero
    return (f_A.to(device, dtype), f_B.to(device, dtype), warp.to(device))


def reference(f_A, f_B, warp, radius):
    """Materialising reference in fp64: one grid_sample of all K windows -> [B, H, W, K]."""
    B, C, H, W = f_A.shape
    n = 2 * radius + 1
    i = torch.arange(n, dtype=torch.float64)
    ox = ((-2 * radius + 2 * i) / W)[None, :].expand(n, n)
    oy = ((-2 * radius + 2 * i) / H)[:, None].expand(n, n)
    off = torch.stack((ox, oy), -1).reshape(n * n, 2).to(warp.device)
    coords = (warp.double()[:, :, :, None, :] + off).reshape(B, H, W * n * n, 2)
    win = F.grid_sample(f_B.double(), coords, mode='bilinear', padding_mode='zeros',
                        align_corners=False).reshape(B, C, H, W, n * n)
    return torch.einsum('bchw,bchwk->bhwk', f_A.double() / C ** 0.5, win)


# ------------------------------------------------------------------ nvcc: the kernel compiles
@needs_nvcc
def test_kernel_compiles_with_nvcc(tmp_path):
    """The .cu (kernel + launcher, all three dtypes) compiles for sm_80, sm_87 and sm_90 with
    the flags of torch's CUDA builds, without register spills."""
    obj = tmp_path / 'local_corr.o'
    listed = subprocess.run([NVCC, '--list-gpu-arch'], capture_output=True, text=True).stdout
    archs = [sm for sm in ('80', '87', '90') if not listed or f'compute_{sm}' in listed]
    assert '80' in archs, f'this nvcc cannot target sm_80: {listed}'
    gencode = []
    for sm in archs:
        gencode += ['-gencode', f'arch=compute_{sm},code=sm_{sm}']
    proc = _run([NVCC, '-c', str(CU), '-o', str(obj), '-std=c++17', '-O3', '-Xcompiler', '-fPIC',
                 *TORCH_NVCC_FLAGS, *gencode, '-Xptxas', '-v', '-Werror', 'all-warnings'])
    assert obj.stat().st_size > 0
    log = proc.stdout + proc.stderr
    assert 'local_corr_kernel' in log
    no_spill = re.compile(r'\b0 bytes spill stores, 0 bytes spill loads')
    spills = [ln for ln in log.splitlines() if 'spill' in ln and not no_spill.search(ln)]
    assert not spills, spills
    for sm in archs:
        assert f'sm_{sm}' in log


@pytest.mark.slow  # 10-25 s: the torch headers
def test_binding_compiles_with_torch_headers(tmp_path):
    """local_corr.cpp (op registration, checks, device guard, stream) compiles with g++ against
    this torch's headers. CPU wheels ship c10/cuda without its generated config header; an empty
    stand-in is provided for that one file."""
    if shutil.which('g++') is None:
        pytest.skip('g++ not found')
    from torch.utils.cpp_extension import include_paths
    cuda_inc = None
    for cand in (os.environ.get('CUDA_HOME'), '/usr/local/cuda'):
        if cand and (Path(cand) / 'include' / 'cuda_runtime_api.h').is_file():
            cuda_inc = Path(cand) / 'include'
            break
    if cuda_inc is None:
        pytest.skip('CUDA toolkit headers (cuda_runtime_api.h) not found')
    stub = tmp_path / 'stub'
    macros = 'c10/cuda/impl/cuda_cmake_macros.h'
    if not any((Path(p) / macros).is_file() for p in include_paths()):
        (stub / macros).parent.mkdir(parents=True)
        (stub / macros).write_text('#pragma once\n')
    cmd = ['g++', '-c', str(CPP), '-o', str(tmp_path / 'local_corr_cpp.o'), '-std=c++20',
           '-fPIC', '-O0', '-Wall', '-Werror=return-type', f'-I{cuda_inc}', f'-I{stub}']
    cmd += [f'-I{p}' for p in include_paths()]
    _run(cmd)


# --------------------------------------------- nvcc: the kernel's arithmetic, run on the host
HARNESS = r'''
#include "local_corr.cu"
// Runs the kernel's per-output function corr_one() over every (b, pixel, k) on the host,
// in the order of the kernel's threads and with the kernel's batch offsets and strides.
template <typename T>
static void run(const T* fa, const int64_t* sa, const T* fb, const int64_t* sb,
                const float* warp, float* out, int B, int C, int H, int W, int Hb, int Wb,
                int r) {
  using romav2_local_corr::Strides;
  const int K = (2 * r + 1) * (2 * r + 1);
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < K; ++k)
      for (int64_t pix = 0; pix < HW; ++pix)
        out[(b * HW + pix) * K + k] = romav2_local_corr::corr_one<T>(
            fa + b * sa[0], Strides{sa[1], sa[2], sa[3]}, fb + b * sb[0],
            Strides{sb[1], sb[2], sb[3]}, warp + b * HW * 2, C, H, W, Hb, Wb, r, pix, k);
}
extern "C" void host_local_corr(int dtype, const void* fa, const int64_t* sa, const void* fb,
                                const int64_t* sb, const float* warp, float* out, int B, int C,
                                int H, int W, int Hb, int Wb, int r) {
  if (dtype == 0) run(static_cast<const float*>(fa), sa, static_cast<const float*>(fb), sb,
                      warp, out, B, C, H, W, Hb, Wb, r);
  if (dtype == 1) run(static_cast<const __half*>(fa), sa, static_cast<const __half*>(fb), sb,
                      warp, out, B, C, H, W, Hb, Wb, r);
  if (dtype == 2) run(static_cast<const __nv_bfloat16*>(fa), sa,
                      static_cast<const __nv_bfloat16*>(fb), sb, warp, out, B, C, H, W, Hb,
                      Wb, r);
}
'''


@pytest.fixture(scope='module')
def host_kernel(tmp_path_factory):
    if NVCC is None:
        pytest.skip('nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)')
    d = tmp_path_factory.mktemp('host_kernel')
    src = d / 'harness.cu'
    src.write_text(HARNESS)
    lib = d / 'harness.so'
    _run([NVCC, '-shared', '-Xcompiler', '-fPIC', '-O2', '-std=c++17', *TORCH_NVCC_FLAGS,
          f'-I{CU.parent}', '-gencode', 'arch=compute_80,code=sm_80', str(src), '-o', str(lib)])
    so = ctypes.CDLL(str(lib))
    so.host_local_corr.restype = None
    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

    def call(f_A, f_B, warp, radius):
        """The features are passed as they are (any strides), as the op does."""
        warp = warp.float().contiguous()
        B, C, H, W = f_A.shape
        Hb, Wb = f_B.shape[2:]
        out = torch.full((B, H, W, (2 * radius + 1) ** 2), float('nan'))
        strides = [(ctypes.c_int64 * 4)(*t.stride()) for t in (f_A, f_B)]
        p = ctypes.c_void_p
        so.host_local_corr(ctypes.c_int(codes[f_A.dtype]), p(f_A.data_ptr()), strides[0],
                           p(f_B.data_ptr()), strides[1], p(warp.data_ptr()), p(out.data_ptr()),
                           *map(ctypes.c_int, (B, C, H, W, Hb, Wb, radius)))
        return out
    return call


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_host_kernel_matches_grid_sample(host_kernel, case):
    B, C, H, W, Hb, Wb, r = case
    f_A, f_B, warp = random_inputs(B, C, H, W, Hb, Wb, seed=sum(case))
    out = host_kernel(f_A, f_B, warp, r)
    ref = reference(f_A, f_B, warp, r)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert (out[0, -1, -1] == 0).all()  # far-outside warp


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_host_kernel_low_precision(host_kernel, dtype):
    """fp16/bf16 features are widened exactly and accumulated in fp32."""
    B, C, H, W, Hb, Wb, r = CASES[0]
    f_A, f_B, warp = random_inputs(B, C, H, W, Hb, Wb, dtype=dtype)
    out = host_kernel(f_A, f_B, warp, r)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(f_A.float(), f_B.float(), warp, r),
                               atol=1e-5, rtol=1e-5)


def test_host_kernel_reads_any_layout_in_place(host_kernel):
    """Channels-last features (the refiners' projected BHWC tensors, permuted) and strided views
    give the NCHW result: the kernel follows the strides, nothing is copied."""
    B, C, H, W, Hb, Wb, r = CASES[1]
    f_A, f_B, warp = random_inputs(B, C, H, W, Hb, Wb, seed=5)
    expected = host_kernel(f_A, f_B, warp, r)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (f_A, f_B)]
    assert not cl[0].is_contiguous()
    torch.testing.assert_close(host_kernel(*cl, warp, r), expected, atol=1e-6, rtol=1e-6)
    wide = torch.randn(B, 2 * C, H, W + 3)  # a channel slice of a wider, padded tensor
    wide[:, ::2, :, :W] = f_A
    torch.testing.assert_close(host_kernel(wide[:, ::2, :, :W], f_B, warp, r), expected,
                               atol=1e-6, rtol=1e-6)


def test_host_kernel_matches_official(host_kernel):
    """Against the official 2.0.1 fallback (``native_torch_local_corr``), [B, K, H, W]."""
    from official_oracle import import_official
    try:
        import_official()
        from romav2.local_correlation import local_correlation as official
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f'official romav2 package not importable: {exc}')
    for B, C, H, W, Hb, Wb, r in CASES[:3]:
        f_A, f_B, warp = random_inputs(B, C, H, W, Hb, Wb, seed=7)
        ref = official(f_A, f_B, r, warp, None).permute(0, 2, 3, 1)
        torch.testing.assert_close(host_kernel(f_A, f_B, warp, r), ref, atol=1e-5, rtol=1e-5)


def test_host_kernel_matches_torch_path(host_kernel):
    from romav2_core.local_correlation import local_correlation
    for B, C, H, W, Hb, Wb, r in CASES:
        f_A, f_B, warp = random_inputs(B, C, H, W, Hb, Wb, seed=3)
        ref = local_correlation(f_A, f_B, warp, r, impl='torch').permute(0, 2, 3, 1)
        torch.testing.assert_close(host_kernel(f_A, f_B, warp, r), ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------- torch.compile: the fake implementation
def test_op_schema_is_the_bindings():
    """cuda_ext.OP_SCHEMA (used to define a stand-in op below) is local_corr.cpp's m.def."""
    defined = re.findall(r'm\.def\("([^"]+)"\)', CPP.read_text())
    assert defined == [cuda_ext.OP_SCHEMA]
    assert cuda_ext.OP_QUALNAME == 'romav2_cuda_ext::local_correlation'


FAKE_TRACE = r'''
import sys, torch
import cuda_ext
from romav2_core.local_correlation import local_correlation
from romav2_core.refiner import ConvRefiner, REFINER_SPECS
# Stand-in for the CUDA library on a CPU machine: the binding's schema, a CPU kernel (the
# PyTorch path in the kernel's [B, H, W, K] layout) and cuda_ext's own fake registration.
lib = torch.library.Library('romav2_cuda_ext', 'DEF')
lib.define(cuda_ext.OP_SCHEMA)
calls = []
def cpu_kernel(f_A, f_B, warp, radius):
    calls.append(tuple(f_A.stride()))
    return local_correlation(f_A, f_B, warp, radius, impl='torch').permute(0, 2, 3, 1).contiguous()
lib.impl('local_correlation', cpu_kernel, 'CPU')
cuda_ext._register_fake(torch)
cuda_ext._register_fake(torch)  # a second load in the process is harmless
with torch._subclasses.fake_tensor.FakeTensorMode():
    out = torch.ops.romav2_cuda_ext.local_correlation(
        torch.empty(2, 8, 5, 7), torch.empty(2, 8, 6, 4), torch.empty(2, 5, 7, 2), 2)
    assert out.shape == (2, 5, 7, 25) and out.dtype == torch.float32, out
torch.manual_seed(0)
refiner = ConvRefiner(REFINER_SPECS[4]).eval().requires_grad_(False)
g = torch.Generator().manual_seed(1)
f_A, f_B = torch.randn(1, 12, 16, 256, generator=g), torch.randn(1, 12, 16, 256, generator=g)
warp = torch.rand(1, 12, 16, 2, generator=g) * 2 - 1
conf = torch.randn(1, 12, 16, 4, generator=g)
scale = torch.tensor([0.5, 0.25])
with torch.inference_mode():
    eager = refiner(f_A, f_B, warp, conf, scale, local_corr_impl='torch')
    compiled = torch.compile(refiner, fullgraph=True, dynamic=False, backend=sys.argv[1])
    traced = compiled(f_A, f_B, warp, conf, scale, local_corr_impl='cuda')
assert calls and all(s[1] == 1 for s in calls), calls  # channels-last features, no copy
for a, b in zip(traced, eager):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
from torch._dynamo.utils import counters
assert not counters['graph_break'], counters['graph_break']
print('ok')
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason='defines a CPU stand-in for the op')
def test_op_traces_under_torch_compile_through_its_fake():
    """With a stand-in op of the binding's schema (a CPU kernel) and cuda_ext's fake
    registration, a refiner on the 'cuda' path compiles with fullgraph=True (no graph break),
    hands the kernel its channels-last features as they are, and equals the PyTorch path."""
    proc = subprocess.run([sys.executable, '-c', FAKE_TRACE, 'aot_eager'], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-4000:]


# ---------------------------------------------------------------------------- the loader
def test_import_touches_neither_torch_nor_cuda():
    code = ('import sys; import romav2_cuda_ext as cuda_ext; '
            'assert "torch" not in sys.modules, "cuda_ext imported torch"; '
            'print(cuda_ext.__name__)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def fresh_loader(monkeypatch):
    """cuda_ext with its resolution state reset (restored afterwards)."""
    monkeypatch.setattr(cuda_ext, '_resolved', False)
    monkeypatch.setattr(cuda_ext, '_error', None)
    monkeypatch.setattr(cuda_ext, '_path', None)
    return cuda_ext


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the loader on a CPU-only machine')
def test_loader_without_cuda(fresh_loader, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv('ROMAV2_CUDA_EXT_DIR', str(tmp_path / 'cache'))
    monkeypatch.delenv('ROMAV2_CUDA_EXT_DISABLE', raising=False)
    with caplog.at_level(logging.INFO, logger='romav2_core'):
        assert fresh_loader.is_available() is False
        assert fresh_loader.is_available() is False  # resolved once
    err = fresh_loader.load_error()
    assert 'torch.cuda.is_available() is False' in err
    assert fresh_loader.active_path() is None
    lines = [r.getMessage() for r in caplog.records if 'cuda_ext' in r.getMessage()]
    assert len(lines) == 1 and 'unavailable' in lines[0] and err in lines[0]
    assert not (tmp_path / 'cache').exists()  # no build attempted
    f_A = torch.zeros(1, 4, 3, 3)
    with pytest.raises(RuntimeError, match='unavailable: torch.cuda.is_available'):
        fresh_loader.local_correlation(f_A, f_A, torch.zeros(1, 3, 3, 2), 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason='fakes CUDA on a CPU-only machine')
def test_loader_reports_failed_paths(fresh_loader, monkeypatch, tmp_path):
    """With CUDA faked on, a broken prebuilt library and a failing JIT build both show up in
    load_error(), and nothing raises before local_correlation() is called."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setenv('ROMAV2_CUDA_EXT_LIB', str(tmp_path / 'missing.so'))
    monkeypatch.setenv('ROMAV2_CUDA_EXT_DIR', str(tmp_path / 'cache'))
    monkeypatch.delenv('ROMAV2_CUDA_EXT_DISABLE', raising=False)
    assert fresh_loader.is_available() is False
    err = fresh_loader.load_error()
    assert 'prebuilt' in err and 'missing.so' in err and 'JIT build failed' in err, err
    with pytest.raises(RuntimeError, match='JIT build failed'):
        fresh_loader.local_correlation(None, None, None, 1)


def test_loader_disabled_by_env(fresh_loader, monkeypatch):
    monkeypatch.setenv('ROMAV2_CUDA_EXT_DISABLE', '1')
    assert fresh_loader.is_available() is False
    assert 'ROMAV2_CUDA_EXT_DISABLE' in fresh_loader.load_error()
    with pytest.raises(RuntimeError, match='ROMAV2_CUDA_EXT_DISABLE'):
        fresh_loader.local_correlation(None, None, None, 1)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv('ROMAV2_CUDA_EXT_DIR', str(tmp_path))
    assert Path(cuda_ext.build_dir()).parent == tmp_path
    monkeypatch.delenv('ROMAV2_CUDA_EXT_DIR')
    assert Path(cuda_ext.build_dir()).parent == (
        Path.home() / '.cache' / 'romav2_ros' / 'cuda_ext')


# ------------------------------------------------------------------------------- on a GPU
def _require_kernel():
    if not cuda_ext.is_available():
        pytest.fail(f'CUDA is available but the kernel is not: {cuda_ext.load_error()}')


@pytest.mark.gpu
@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_kernel_matches_torch_path_fp32(case):
    from romav2_core.local_correlation import local_correlation
    _require_kernel()
    B, C, H, W, Hb, Wb, r = case
    f_A, f_B, warp = random_inputs(B, C, H, W, Hb, Wb, device='cuda', seed=sum(case))
    with torch.inference_mode():
        out = cuda_ext.local_correlation(f_A, f_B, warp, r)
        ref = local_correlation(f_A, f_B, warp, r, impl='torch').permute(0, 2, 3, 1)
        via_dispatch = local_correlation(f_A, f_B, warp, r, impl='cuda').permute(0, 2, 3, 1)
    assert out.dtype == torch.float32 and out.shape == (B, H, W, (2 * r + 1) ** 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_dispatch, out, atol=0, rtol=0)
    torch.testing.assert_close(out.cpu().double(), reference(f_A.cpu(), f_B.cpu(), warp.cpu(), r),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('r', [0, 1, 2, 3])
def test_kernel_matches_torch_path_low_precision(dtype, r):
    from romav2_core.local_correlation import local_correlation
    _require_kernel()
    f_A, f_B, warp = random_inputs(2, 64, 11, 14, 9, 16, dtype=dtype, device='cuda', seed=r)
    with torch.inference_mode():
        out = cuda_ext.local_correlation(f_A, f_B, warp, r)
        ref = local_correlation(f_A, f_B, warp, r, impl='torch').permute(0, 2, 3, 1)
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert rel <= 1e-2, rel
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=1e-2)


@pytest.mark.gpu
def test_kernel_refuses_grad_and_bad_inputs():
    _require_kernel()
    f_A, f_B, warp = random_inputs(1, 8, 5, 6, 5, 6, device='cuda')
    with pytest.raises(RuntimeError, match='inference only'):
        cuda_ext.local_correlation(f_A.requires_grad_(), f_B, warp, 1)
    with pytest.raises(RuntimeError, match='warp'):
        cuda_ext.local_correlation(f_A.detach(), f_B, warp[:, :4], 1)
    with pytest.raises(RuntimeError, match='float32, float16 or bfloat16'):
        cuda_ext.local_correlation(f_A.detach().double(), f_B.double(), warp, 1)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize('dtype,atol', [(torch.float32, 1e-3), (None, 2e-2)])
def test_full_model_cuda_kernel_equals_torch_path(dtype, atol):
    """A whole forward (random weights) with the kernel equals the one with the PyTorch path:
    tight in fp32, within bf16 noise with the default mixed precision."""
    from romav2_core.model import RoMaV2
    _require_kernel()
    g = torch.Generator().manual_seed(0)
    img_A = torch.rand(1, 3, 480, 640, generator=g).cuda()
    img_B = torch.rand(1, 3, 480, 640, generator=g).cuda()
    outs = {}
    for impl in ('torch', 'cuda'):
        model = RoMaV2.from_random(seed=0, setting='turbo', device='cuda', dtype=dtype,
                                   local_corr=impl).eval()
        outs[impl] = model.match(img_A, img_B)
    for key in ('warp_AB', 'overlap_AB'):
        a, b = outs['cuda'][key].float(), outs['torch'][key].float()
        assert torch.isfinite(a).all()
        assert (a - b).abs().mean() <= atol, (key, (a - b).abs().mean().item())
        assert (a - b).abs().max() <= 50 * atol, (key, (a - b).abs().max().item())
