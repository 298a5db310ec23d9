"""Host -> device uploads and stage clocks (CUDA paths: gpu-marked, and faked for the logic)."""
import numpy as np
import pytest
import torch

from romav2_core import transfer


def test_upload_keeps_uint8_and_lays_out_bchw():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(2)]
    x = transfer.ImageUploader('cpu')(imgs)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (2, 3, 5, 7)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), img)


def test_stage_clock_synchronises_the_configured_cuda_device(monkeypatch):
    """On CUDA a stage's time must include its kernels: the device is synchronised before
    the clock starts and before it stops (faked here: no GPU needed)."""
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: calls.append(device))
    clock = transfer.StageClock('cuda:1')
    timings = {}
    with clock.stage('model', timings):
        calls.append('work')
    assert calls == [torch.device('cuda:1'), 'work', torch.device('cuda:1')]
    assert timings['model'] >= 0
    calls.clear()
    with transfer.StageClock('cpu').stage('model', timings):
        pass
    assert calls == []


@pytest.mark.gpu
def test_upload_through_pinned_staging_on_cuda():
    up = transfer.ImageUploader('cuda')
    rng = np.random.default_rng(1)
    for shape in ((480, 640, 3), (240, 320, 3), (480, 640, 3)):
        imgs = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
        x = up(imgs)
        assert x.is_cuda and x.dtype == torch.uint8
        np.testing.assert_array_equal(x[1].permute(1, 2, 0).cpu().numpy(), imgs[1])
    assert up._staging.is_pinned()
