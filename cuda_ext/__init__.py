"""Fused local-correlation CUDA extension (built on demand).

``local_correlation(f_A, f_B, warp, radius)`` computes, for every pixel x of f_A,

    out[b, y, x, k] = sum_c f_A[b, c, y, x] / sqrt(C) * bilinear(f_B[b, c], warp[b, y, x] + off_k)

with the (2r+1)^2 offsets ``off_k`` of the official ``romav2/local_correlation.py`` (see
local_corr.cu and README.md), in one CUDA kernel that allocates nothing besides its fp32
``[B, H, W, K]`` output. Inference only (no backward).

Everything here is lazy: importing this package imports neither torch nor torch.cuda. The first
call of :func:`is_available` (or :func:`local_correlation`) resolves the extension once:

1. ``torch.cuda.is_available()`` must be True;
2. a library built at install time is loaded if there is one (``ROMAV2_CUDA_EXT_LIB``, or a
   ``_romav2_local_corr*.so`` next to this file, which setup.py's build puts there with a
   ``_romav2_local_corr.json`` naming its torch and architectures: a library built for another
   torch or for none of this GPU's architectures is skipped, with the reason);
3. otherwise the sources are compiled with ``torch.utils.cpp_extension.load`` (JIT, needs nvcc
   and ninja) into ``$ROMAV2_CUDA_EXT_DIR`` (default ``~/.cache/romav2_ros/cuda_ext``), in a
   sub-folder per torch / CUDA version and GPU architecture; later runs reuse that build.

``ROMAV2_CUDA_EXT_DISABLE=1`` skips all of it (:func:`is_available` is then False). One line on
the ``romav2_core`` logger says which path is active or why the kernel is unavailable. Once the
op is registered, :func:`fake_local_correlation` is registered as its fake (meta)
implementation, so ``torch.compile`` traces through the op without running it.
"""
import glob
import json
import logging
import os
import threading

__all__ = ['is_available', 'load_error', 'local_correlation', 'active_path', 'build_dir',
           'fake_local_correlation', 'OP_QUALNAME', 'OP_SCHEMA']

_LOG = logging.getLogger('romav2_core')
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = ('local_corr.cpp', 'local_corr.cu')
_BUILD_INFO = '_romav2_local_corr.json'  # written by setup.py's install-time build
_OP_NAMESPACE = 'romav2_cuda_ext'
_OP_NAME = 'local_correlation'
#: The op's qualified name and schema (local_corr.cpp's TORCH_LIBRARY block defines it).
OP_QUALNAME = '{}::{}'.format(_OP_NAMESPACE, _OP_NAME)
OP_SCHEMA = 'local_correlation(Tensor f_A, Tensor f_B, Tensor warp, int radius) -> Tensor'

_lock = threading.Lock()
_resolved = False
_error = None  # str: why the kernel is unavailable
_path = None   # str: how it was loaded ('prebuilt <file>' / 'jit <dir>')


def _cache_root():
    root = os.environ.get('ROMAV2_CUDA_EXT_DIR')
    if root:
        return os.path.abspath(os.path.expanduser(root))
    return os.path.join(os.path.expanduser('~'), '.cache', 'romav2_ros', 'cuda_ext')


def build_dir():
    """The folder a JIT build of this torch / CUDA / GPU combination goes to (needs torch)."""
    import torch
    major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    tag = 'torch{}_cu{}_sm{}{}'.format(torch.__version__, torch.version.cuda, major, minor)
    tag = ''.join(ch if ch.isalnum() or ch in '._-' else '_' for ch in tag)
    return os.path.join(_cache_root(), tag)


def _op_registered(torch):
    try:
        return hasattr(getattr(torch.ops, _OP_NAMESPACE), _OP_NAME)
    except (AttributeError, RuntimeError):
        return False


def _prebuilt_candidates():
    env = os.environ.get('ROMAV2_CUDA_EXT_LIB')
    if env:
        return [env]
    return sorted(glob.glob(os.path.join(_HERE, '_romav2_local_corr*.so')))


def arch_fits(arch_list, capability):
    """Whether code built for ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax, e.g. '8.0;8.6+PTX')
    runs on a GPU of compute ``capability`` (major, minor): a cubin for X.y runs on X.z, z >= y
    (an arch-specific X.ya only on X.y), and PTX for X.y on any later GPU."""
    for entry in arch_list.replace(',', ';').replace(' ', ';').split(';'):
        if not entry:
            continue
        ptx = entry.endswith('+PTX')
        name = entry[:-4] if ptx else entry
        specific = name.endswith('a')
        major, minor = (int(part) for part in name.rstrip('a').split('.'))
        if ptx and capability >= (major, minor):
            return True
        if capability[0] == major and (capability[1] == minor or
                                       (not specific and capability[1] > minor)):
            return True
    return False


def _prebuilt_mismatch(lib, torch):
    """Why the install-time build ``lib`` does not fit this process, or None (None as well
    when it has no build info, e.g. a library copied by hand)."""
    info_file = os.path.join(os.path.dirname(lib), _BUILD_INFO)
    if not os.path.isfile(info_file):
        return None
    with open(info_file) as f:
        info = json.load(f)
    if info.get('torch') != torch.__version__:
        return 'prebuilt {} was built for torch {}, this is torch {}'.format(
            lib, info.get('torch'), torch.__version__)
    capability = torch.cuda.get_device_capability()
    if not arch_fits(info.get('arch_list', ''), capability):
        return 'prebuilt {} was built for TORCH_CUDA_ARCH_LIST={}, this GPU is sm_{}{}'.format(
            lib, info.get('arch_list'), *capability)
    return None


def fake_local_correlation(f_A, f_B, warp, radius):
    """The op's output without computing it: fp32 ``[B, H, W, (2 radius + 1)^2]`` on f_A's
    device (the fake implementation ``torch.compile`` and meta tensors use)."""
    import torch
    B, _, H, W = f_A.shape
    return f_A.new_empty((B, H, W, (2 * radius + 1) ** 2), dtype=torch.float32)


def _register_fake(torch):
    """Register :func:`fake_local_correlation` for the (already defined) op, once."""
    try:
        torch.library.register_fake(OP_QUALNAME)(fake_local_correlation)
    except RuntimeError as exc:  # a second load in this process: keep the first one
        if 'already has' not in str(exc) and 'already registered' not in str(exc):
            raise


def _resolve():
    """Find or build the extension; returns (path, error), exactly one of them None."""
    path, error = _find_or_build()
    if error is None:
        import torch
        _register_fake(torch)
    return path, error


def _find_or_build():
    """Load a registered, prebuilt or JIT-built op; returns (path, error)."""
    if os.environ.get('ROMAV2_CUDA_EXT_DISABLE', '') not in ('', '0'):
        return None, 'disabled by ROMAV2_CUDA_EXT_DISABLE={}'.format(
            os.environ['ROMAV2_CUDA_EXT_DISABLE'])
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        return None, 'torch cannot be imported ({})'.format(exc)
    if not torch.cuda.is_available():
        return None, ('torch.cuda.is_available() is False (torch {}, built for CUDA {})'
                      .format(torch.__version__, torch.version.cuda))
    if _op_registered(torch):
        return 'already registered in this process', None
    errors = []
    for lib in _prebuilt_candidates():
        mismatch = _prebuilt_mismatch(lib, torch)
        if mismatch:
            errors.append(mismatch)
            continue
        try:
            torch.ops.load_library(lib)
        except (OSError, RuntimeError) as exc:
            errors.append('prebuilt {} failed to load: {}'.format(lib, exc))
            continue
        if _op_registered(torch):
            return 'prebuilt {}'.format(lib), None
        errors.append('prebuilt {} does not register {}::{}'.format(
            lib, _OP_NAMESPACE, _OP_NAME))
    try:
        from torch.utils import cpp_extension
        directory = build_dir()
        os.makedirs(directory, exist_ok=True)
        cpp_extension.load(
            name='romav2_local_corr',
            sources=[os.path.join(_HERE, src) for src in _SOURCES],
            build_directory=directory,
            extra_cflags=['-O3'],
            extra_cuda_cflags=['-O3'],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - any build failure means "unavailable"
        first = str(exc).strip().splitlines()
        errors.append('JIT build failed: {}: {}'.format(
            type(exc).__name__, first[0] if first else ''))
        return None, '; '.join(errors)
    if not _op_registered(torch):
        errors.append('JIT build loaded but {}::{} is not registered'.format(
            _OP_NAMESPACE, _OP_NAME))
        return None, '; '.join(errors)
    return 'jit {}'.format(directory), None


def _ensure():
    global _resolved, _error, _path
    if _resolved:
        return
    with _lock:
        if _resolved:
            return
        path, error = _resolve()
        _path, _error, _resolved = path, error, True
        if error is None:
            _LOG.info('cuda_ext: fused local-correlation CUDA kernel active (%s)', path)
        else:
            _LOG.info('cuda_ext: fused local-correlation CUDA kernel unavailable: %s', error)


def is_available():
    """True when CUDA is usable and the kernel was loaded or built (may build it: minutes)."""
    _ensure()
    return _error is None


def load_error():
    """Why the kernel is unavailable (a sentence), or None when it is available."""
    _ensure()
    return _error


def active_path():
    """'prebuilt <file>', 'jit <dir>' or 'already registered ...'; None when unavailable."""
    _ensure()
    return _path


def local_correlation(f_A, f_B, warp, radius):
    """Fused local correlation on CUDA tensors; returns fp32 ``[B, H, W, (2 radius + 1)^2]``.

    f_A ``[B, C, H, W]`` and f_B ``[B, C, Hb, Wb]`` (float32, float16 or bfloat16, one dtype,
    any strides: NCHW, channels-last and views are read in place), warp ``[B, H, W, 2]``
    normalised (x, y) in [-1, 1]. Inference only: refuses inputs that require grad while grad
    mode is on. Raises RuntimeError (with :func:`load_error`) when the kernel is unavailable.
    """
    if not is_available():
        raise RuntimeError('cuda_ext.local_correlation: the fused CUDA kernel is unavailable: '
                           '{}'.format(_error))
    import torch
    op = getattr(getattr(torch.ops, _OP_NAMESPACE), _OP_NAME)
    return op(f_A, f_B, warp, int(radius))
