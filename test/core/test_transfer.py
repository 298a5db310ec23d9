"""Host <-> device traffic: uploads, one-copy staging of results, device timers (CUDA paths:
gpu-marked)."""
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


def test_staging_on_the_cpu_hands_the_tensors_over_without_a_copy():
    t = {'a': torch.arange(12, dtype=torch.float32).reshape(3, 4), 'b': torch.tensor([True])}
    staged = transfer.HostStaging('cpu').stage(t)
    host = staged.wait()
    assert np.shares_memory(host['a'], t['a'].numpy())
    np.testing.assert_array_equal(host['b'], [True])
    staged.release()


def test_device_timer_on_the_cpu_is_wall_clock():
    timer = transfer.DeviceTimer('cpu').start()
    torch.ones(1000).sum()
    assert timer.stop().seconds() >= 0


@pytest.mark.gpu
def test_staging_on_cuda_is_one_copy_into_reused_pinned_buffers():
    """Several results of mixed dtypes and shapes come back exactly, through one pinned
    buffer that the next set reuses once released."""
    staging = transfer.HostStaging('cuda')
    want = {'f': torch.randn(5, 7, 3), 'b': torch.rand(9) > 0.5,
            'i': torch.arange(5, dtype=torch.int64), 's': torch.tensor(2.5)}
    staged = staging.stage({k: v.cuda() for k, v in want.items()})
    host = staged.wait()
    for k, v in want.items():
        np.testing.assert_array_equal(host[k], v.numpy())
    buffer = staged._host
    assert buffer.is_pinned()
    staged.release()
    again = staging.stage({k: v.cuda() for k, v in want.items()})
    again.wait()
    assert again._host.data_ptr() == buffer.data_ptr()      # reused, not reallocated


@pytest.mark.gpu
def test_device_timer_measures_the_device_without_blocking():
    timer = transfer.DeviceTimer('cuda').start()
    x = torch.randn(2048, 2048, device='cuda')
    for _ in range(10):
        x = x @ x / 2048
    timer.stop()
    assert timer.seconds() > 0


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
