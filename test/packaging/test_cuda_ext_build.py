"""The fused kernel's install-time build: setup.py's decision, and how the loader picks it up.

setup.py compiles cuda_ext/ as ``romav2_cuda_ext._romav2_local_corr`` (torch's CUDAExtension)
when a CUDA torch and an nvcc of the same CUDA major are present, for TORCH_CUDA_ARCH_LIST or
else the visible GPUs; it records torch and architectures in ``_romav2_local_corr.json``, and
the loader skips a library that does not fit (then JIT, then the PyTorch path). On this CPU
machine the build is skipped with its reason; test_colcon_workspace.py checks that colcon's
build says so.
"""
from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import romav2_cuda_ext

ROOT = Path(__file__).resolve().parents[2]
SETUP = runpy.run_path(str(ROOT / 'setup.py'), run_name='setup_py_under_test')  # no setup()
plan = SETUP['cuda_extension_plan']
NVCC = '/usr/local/cuda/bin/nvcc'


def fake_torch(version='2.13.0+cu128', cuda='12.8', capabilities=((9, 0),)):
    return SimpleNamespace(__version__=version, version=SimpleNamespace(cuda=cuda),
                           cuda=SimpleNamespace(device_count=lambda: len(capabilities),
                                                get_device_capability=capabilities.__getitem__))


@pytest.mark.parametrize('torch_, env, nvcc, release, reason', [
    (fake_torch(), {'ROMAV2_CUDA_EXT_DISABLE': '1'}, NVCC, (12, 8), 'ROMAV2_CUDA_EXT_DISABLE'),
    (None, {}, NVCC, (12, 8), 'torch is not importable'),
    (fake_torch('2.13.0+cpu', None), {}, NVCC, (13, 0), 'torch 2.13.0+cpu is a CPU build'),
    (fake_torch(), {}, None, None, 'nvcc not found'),
    (fake_torch(), {}, NVCC, (13, 0), 'CUDA 13.0, torch 2.13.0+cu128 was built with CUDA 12.8'),
    (fake_torch(capabilities=()), {}, NVCC, (12, 8), 'no GPU is visible'),
], ids=['disabled', 'no-torch', 'cpu-torch', 'no-nvcc', 'nvcc-major', 'no-gpu-no-arch-list'])
def test_plan_skips_with_the_reason(torch_, env, nvcc, release, reason):
    arch_list, why = plan(torch_, env, nvcc, release)
    assert arch_list is None and reason in why


@pytest.mark.parametrize('capabilities, env, expected', [
    (((8, 7),), {}, '8.7'),                                    # a Jetson Orin
    (((9, 0), (8, 6), (9, 0)), {}, '8.6;9.0'),                 # every visible GPU, once
    ((), {'TORCH_CUDA_ARCH_LIST': '8.7'}, '8.7'),              # building an image elsewhere
    (((9, 0),), {'TORCH_CUDA_ARCH_LIST': '8.0;8.6+PTX'}, '8.0;8.6+PTX'),  # the user's choice
    (((9, 0),), {'TORCH_CUDA_ARCH_LIST': 'native'}, '9.0'),
])
def test_plan_builds_for_the_configured_architectures(capabilities, env, expected):
    arch_list, why = plan(fake_torch(capabilities=capabilities), env, NVCC, (12, 6))
    assert why is None and arch_list == expected  # minor CUDA versions may differ


def test_plan_on_this_machine_matches_its_torch():
    """The real inputs: a build exactly when this torch is a CUDA build and nvcc fits."""
    nvcc = SETUP['_nvcc'](dict(os.environ))
    release = SETUP['_nvcc_release'](nvcc) if nvcc else None
    arch_list, why = plan(torch, dict(os.environ), nvcc, release)
    if torch.version.cuda is None:
        assert arch_list is None and 'is a CPU build' in why
    elif nvcc and release and release[0] == int(torch.version.cuda.split('.')[0]) and \
            torch.cuda.device_count():
        assert why is None and arch_list


@pytest.mark.parametrize('arch_list, capability, fits', [
    ('8.7', (8, 7), True),
    ('8.0', (8, 7), True),        # a cubin runs on later minors of its major
    ('8.6', (8, 0), False),
    ('8.0;8.6', (9, 0), False),   # no cubin for 9.x, no PTX
    ('8.6+PTX', (9, 0), True),    # PTX is JIT-compiled by the driver for later GPUs
    ('9.0+PTX', (8, 7), False),
    ('9.0a', (9, 0), True),
    ('9.0a', (9, 2), False),      # arch-specific code runs on exactly that GPU
    ('7.5 8.0', (8, 9), True),
    ('', (8, 0), False),
])
def test_arch_fits(arch_list, capability, fits):
    assert romav2_cuda_ext.arch_fits(arch_list, capability) is fits


def prebuilt(tmp_path, info):
    lib = tmp_path / '_romav2_local_corr.cpython-311-x86_64-linux-gnu.so'
    lib.write_bytes(b'not a library')
    (tmp_path / SETUP['CUDA_EXT_INFO']).write_text(json.dumps(info))
    return lib


@pytest.mark.skipif(torch.cuda.is_available(), reason='fakes a GPU on a CPU-only machine')
@pytest.mark.parametrize('info, capability, message', [
    ({'torch': 'x.y', 'arch_list': '9.0'}, (9, 0), 'was built for torch x.y, this is torch'),
    ({'torch': torch.__version__, 'arch_list': '9.0'}, (8, 7),
     'was built for TORCH_CUDA_ARCH_LIST=9.0, this GPU is sm_87'),
])
def test_loader_skips_a_prebuilt_library_that_does_not_fit(tmp_path, monkeypatch, info,
                                                          capability, message):
    """Neither loaded nor trusted: the reason is in load_error, and the JIT fallback runs."""
    lib = prebuilt(tmp_path, info)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a: capability)
    monkeypatch.setenv('ROMAV2_CUDA_EXT_LIB', str(lib))
    monkeypatch.setenv('ROMAV2_CUDA_EXT_DIR', str(tmp_path / 'jit'))
    monkeypatch.delenv('ROMAV2_CUDA_EXT_DISABLE', raising=False)
    path, error = romav2_cuda_ext._resolve()
    assert path is None
    assert message in error and 'failed to load' not in error, error
    assert 'JIT build failed' in error  # the fallback was tried (no CUDA toolchain in torch)


@pytest.mark.skipif(torch.cuda.is_available(), reason='fakes a GPU on a CPU-only machine')
def test_loader_tries_a_prebuilt_library_that_fits(tmp_path, monkeypatch):
    lib = prebuilt(tmp_path, {'torch': torch.__version__, 'arch_list': '8.0;9.0'})
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a: (8, 7))
    monkeypatch.setenv('ROMAV2_CUDA_EXT_LIB', str(lib))
    monkeypatch.setenv('ROMAV2_CUDA_EXT_DIR', str(tmp_path / 'jit'))
    monkeypatch.delenv('ROMAV2_CUDA_EXT_DISABLE', raising=False)
    _, error = romav2_cuda_ext._resolve()
    assert f'prebuilt {lib} failed to load' in error  # attempted: it is not a real library


@pytest.mark.slow  # ~10 s of nvcc
@pytest.mark.skipif(not shutil.which('nvcc') and not Path(NVCC).is_file(), reason='no nvcc')
def test_kernel_compiles_for_the_planned_architectures(tmp_path, monkeypatch):
    """The .cu compiles with the -gencode flags torch's BuildExtension derives from a plan's
    arch list (Jetson Orin and H100 here), with this machine's nvcc."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags
    arch_list, _ = plan(fake_torch(capabilities=((8, 7), (9, 0))), {}, NVCC, (12, 8))
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', arch_list)  # what setup.py hands to torch
    flags = _get_cuda_arch_flags()
    assert sorted(flags) == ['-gencode=arch=compute_87,code=sm_87',
                             '-gencode=arch=compute_90,code=sm_90']
    nvcc = Path(shutil.which('nvcc') or NVCC).resolve()
    obj = tmp_path / 'local_corr.o'
    proc = subprocess.run([str(nvcc), '-c', str(ROOT / 'cuda_ext' / 'local_corr.cu'), '-o',
                           str(obj), '-std=c++17', '-O3', '-Xcompiler', '-fPIC', *flags],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for cuobjdump in (nvcc.parent / 'cuobjdump', Path(NVCC).parent / 'cuobjdump'):
        if not cuobjdump.is_file():
            continue
        listed = subprocess.run([str(cuobjdump), '--list-elf', str(obj)], capture_output=True,
                                text=True, timeout=120)
        assert 'sm_87' in listed.stdout and 'sm_90' in listed.stdout, listed.stdout
        break
