"""The CUDA path of the model (``gpu`` marker: skipped without CUDA; run by
scripts/gpu_check.sh): no host-to-device copy in a warm forward, uint8 input converted on the
GPU, outputs equal to the CPU model's."""
from __future__ import annotations

import pytest
import torch

from random_weights import spread_state_dict
from romav2_core.model import RoMaV2

pytestmark = pytest.mark.gpu

LR = (64, 96)


@pytest.fixture(scope='module')
def models():
    cpu = RoMaV2.from_random(seed=2, setting='turbo', dtype=torch.float32, H_lr=LR[0],
                             W_lr=LR[1])
    cpu.load_state_dict(spread_state_dict(cpu.state_dict(), seed=2))
    gpu = RoMaV2.from_random(seed=2, setting='turbo', dtype=torch.float32, H_lr=LR[0],
                             W_lr=LR[1], device='cuda')
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def _uint8_pair(device):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (1, 3, 75, 110), generator=g, dtype=torch.uint8).to(device)
            for _ in range(2)]


def test_warm_forward_copies_nothing_to_the_device(models):
    """Images already on the GPU: after the first call built the size constants, a forward
    (bidirectional, so both directions' refiners run) makes no host-to-device copy at all."""
    _, gpu = models
    images = _uint8_pair('cuda')
    gpu.bidirectional = True
    try:
        gpu.match(*images)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            gpu.match(*images)
            torch.cuda.synchronize()
    finally:
        gpu.bidirectional = False
    copies = [e.key for e in prof.key_averages() if 'HtoD' in e.key]
    assert copies == [], copies


def test_cuda_outputs_equal_the_cpu_model(models):
    """All fp32 (cuDNN TF32 off inside the forward): the GPU model gives the CPU model's
    outputs to fp32 reduction-order differences; uint8 input from the host is converted on
    the GPU to the same images."""
    cpu, gpu = models
    images = _uint8_pair('cpu')
    want, got = cpu.match(*images), gpu.match(*images)
    for key in ('warp_AB', 'overlap_AB', 'precision_AB'):
        scale = max(1.0, float(want[key].abs().max()))
        torch.testing.assert_close(got[key].cpu(), want[key], atol=1e-4 * scale, rtol=1e-4)
