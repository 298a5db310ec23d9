"""The precision choice (``precision:=auto``) for every device class, without the hardware, and
the fp32-convolution region (no TF32 on CUDA)."""
from __future__ import annotations

import pytest
import torch

from romav2_core import precision
from romav2_core.config import RoMaV2Config, resolve_precision
from romav2_core.precision import DeviceDescription, choose_precision, describe_device

AVX2 = frozenset({'avx2'})
AVX512 = frozenset({'avx2', 'avx512'})
AMX = frozenset({'avx2', 'avx512', 'avx512_bf16', 'amx_tile'})

# (description, what ``auto`` must run). Compute capabilities: V100 7.0, Xavier 7.2, T4 7.5,
# A100 8.0, RTX 30xx 8.6, Orin 8.7, L4 8.9, H100/H200 9.0.
TABLE = [
    (DeviceDescription('cpu', cpu_isa=AVX2, mkldnn_bf16=False), 'fp32'),
    (DeviceDescription('cpu', cpu_isa=AVX512, mkldnn_bf16=True), 'fp32'),  # emulated bf16
    (DeviceDescription('cpu', cpu_isa=AVX512 | {'avx512_bf16'}, mkldnn_bf16=True), 'bf16'),
    (DeviceDescription('cpu', cpu_isa=AMX, mkldnn_bf16=True), 'bf16'),
    (DeviceDescription('cpu', cpu_isa=AMX, mkldnn_bf16=False), 'fp32'),  # no oneDNN bf16
    *[(DeviceDescription('cuda', 0, cc), 'fp32') for cc in ((7, 0), (7, 2), (7, 5))],
    *[(DeviceDescription('cuda', 0, cc), 'bf16') for cc in ((8, 0), (8, 6), (8, 7), (8, 9),
                                                           (9, 0))],
    (DeviceDescription('cuda', 0, None), 'fp32'),  # CUDA not available
    (DeviceDescription('mps'), 'fp32'),
]


def _id(row):
    d, _ = row
    return f'{d.type}-sm{d.compute_capability}' if d.type == 'cuda' else \
        f'{d.type}-{"+".join(sorted(d.cpu_isa)) or "none"}-mkldnn{int(d.mkldnn_bf16)}'


@pytest.mark.parametrize('row', TABLE, ids=[_id(r) for r in TABLE])
def test_auto_precision_table(row):
    device, expected = row
    assert choose_precision('auto', device) == expected
    for explicit in ('bf16', 'fp16', 'fp32'):
        assert choose_precision(explicit, device) == explicit


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two fake GPUs: cuda:0 is an H200 (9.0), cuda:1 a T4 (7.5); the current device is 0.
    ``is_bf16_supported`` raises: the decision must not use it (True on T4 by emulation)."""
    caps = {0: (9, 0), 1: (7, 5)}
    asked = []

    def capability(index=None):
        asked.append(index)
        return caps[0 if index is None else index]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', capability)
    monkeypatch.setattr(torch.cuda, 'get_device_name',
                        lambda index=None: {0: 'H200', 1: 'Tesla T4'}[index or 0])

    def forbidden(*_a, **_k):
        raise AssertionError('torch.cuda.is_bf16_supported() must not decide the precision')
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', forbidden)
    return asked


def test_configured_device_is_the_one_asked(fake_gpus):
    t4 = describe_device('cuda:1')
    assert (t4.index, t4.compute_capability, t4.name) == (1, (7, 5), 'Tesla T4')
    assert fake_gpus == [1]
    assert describe_device('cuda').compute_capability == (9, 0)  # no index: the current one
    assert resolve_precision('auto', 'cuda:1') == 'fp32'
    assert resolve_precision('auto', 'cuda:0') == 'bf16'
    assert resolve_precision('auto', torch.device('cuda', 1)) == 'fp32'
    fp32 = RoMaV2Config().with_precision('auto', 'cuda:1')
    assert fp32 == fp32.all_fp32()
    assert RoMaV2Config().with_precision('auto', 'cuda:0').amp_dtype == 'bf16'


def test_this_cpu_is_described_by_its_own_probes():
    d = describe_device('cpu')
    assert d.type == 'cpu'
    assert ('amx_tile' in d.cpu_isa) == bool(torch.cpu._is_amx_tile_supported())
    assert ('avx512_bf16' in d.cpu_isa) == bool(torch.cpu._is_avx512_bf16_supported())
    assert precision.fast_bf16('cpu') == precision.native_bf16(d)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match='precision'):
        resolve_precision('tf32', 'cpu')


def _tf32_state():
    return torch.backends.cudnn.allow_tf32, torch.backends.cudnn.conv.fp32_precision


def test_fp32_convolutions_turns_cudnn_tf32_off_and_restores():
    before = _tf32_state()
    assert before[0] is True  # torch's default: cuDNN convolutions may use TF32
    with precision.fp32_convolutions('cuda'):
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.conv.fp32_precision != 'tf32'
    assert _tf32_state() == before
    with pytest.raises(KeyError):
        with precision.fp32_convolutions('cuda'):
            raise KeyError('restored on errors too')
    assert _tf32_state() == before
    with precision.fp32_convolutions('cpu'):  # no cuDNN on the CPU: nothing changes
        assert _tf32_state() == before


def test_fp32_convolutions_with_the_per_op_api(monkeypatch):
    """A caller that set cuDNN conv and RNN differently through the per-op API (where reading
    the legacy flag raises): the conv flag alone is switched and restored."""
    rnn = torch.backends.cudnn.rnn
    before = rnn.fp32_precision
    rnn.fp32_precision = 'ieee'
    try:
        with pytest.raises(RuntimeError):
            _ = torch.backends.cudnn.allow_tf32
        with precision.fp32_convolutions('cuda'):
            assert torch.backends.cudnn.conv.fp32_precision == 'ieee'
        assert torch.backends.cudnn.conv.fp32_precision == 'tf32'
    finally:
        rnn.fp32_precision = before


@pytest.mark.gpu
def test_model_convolutions_run_without_tf32_on_cuda():
    """Inside a CUDA forward the refiners' fp32 heads see cuDNN TF32 off; afterwards the
    caller's setting is back."""
    from romav2_core.model import RoMaV2
    model = RoMaV2.from_random(setting='turbo', device='cuda', H_lr=64, W_lr=96)
    seen = []
    hook = model.refiners['1'].warp_head.register_forward_hook(
        lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    try:
        model.match(torch.rand(1, 3, 64, 96, device='cuda'), torch.rand(1, 3, 64, 96,
                                                                       device='cuda'))
    finally:
        hook.remove()
    assert seen == [False]
    assert torch.backends.cudnn.allow_tf32 is True
