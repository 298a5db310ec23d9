"""VGG19BNFeatures: checkpoint key layout, and agreement with the official romav2 2.0.1 VGG19BN."""
import warnings

import torch
from torch import nn

from checkpoint_keys import checkpoint_entries, state_dict_from_rows
from official_oracle import import_official
from romav2_core.vgg import VGG19BNFeatures

PREFIX = 'refiner_features.'


def official_vgg() -> nn.Module:
    """The official fine features, built as ``FineFeatures.Cfg()`` does (vgg19bn, patch 4)."""
    import_official()
    from romav2.features import VGG19BN
    return VGG19BN(patch_size=4, pretrained=False)


def randomize_(module: nn.Module, seed: int = 0) -> None:
    """Random conv weights and BatchNorm affine + running statistics far from identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.layers:
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen)
                                   * (2.0 / layer.weight[0].numel()) ** 0.5)
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))
            elif isinstance(layer, nn.BatchNorm2d):
                n = layer.num_features
                layer.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                layer.bias.copy_(0.2 * torch.randn(n, generator=gen))
                layer.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
                layer.running_var.copy_(0.5 + torch.rand(n, generator=gen) * 2)
                layer.num_batches_tracked.fill_(1000)


def test_state_dict_matches_checkpoint_keys():
    ours = VGG19BNFeatures()
    expected = checkpoint_entries(PREFIX)
    assert expected, 'no refiner_features.* rows in the key table'
    assert {k: (tuple(v.shape), v.dtype) for k, v in ours.state_dict().items()} == expected
    ours.load_state_dict(state_dict_from_rows(PREFIX), strict=True)


def test_fp32_matches_official():
    ours = VGG19BNFeatures().eval()
    randomize_(ours)
    official = official_vgg().eval()
    # The official also holds the third max-pool (index 26), which has no parameters.
    official.load_state_dict(ours.state_dict(), strict=True)
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(images, amp_dtype=None)
        with warnings.catch_warnings():
            # Its hard-coded autocast("cuda") warns and disables itself without CUDA.
            warnings.simplefilter('ignore', UserWarning)
            ref = official(images)
    assert sorted(got) == sorted(ref) == [1, 2, 4]
    for stride, channels in ((1, 64), (2, 128), (4, 256)):
        assert got[stride].shape == (2, 48 // stride, 64 // stride, channels)
        assert got[stride].dtype == ref[stride].dtype == torch.float32
        assert got[stride].stride() == ref[stride].stride()
        assert got[stride].std() > 0.1, 'features nearly constant: weak test'
        # fp32 rounding only (BatchNorm folded into the conv, conv_bn.py): 1e-5 of the scale.
        scale = max(1.0, float(ref[stride].abs().max()))
        torch.testing.assert_close(got[stride], ref[stride], rtol=0, atol=1e-5 * scale)


def test_autocast_returns_compute_dtype():
    """Under autocast the features come back in the autocast dtype, like the official's bf16
    on CUDA (checked here with CPU autocast, which the caller may request explicitly)."""
    ours = VGG19BNFeatures().eval()
    randomize_(ours)
    images = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ours(images, amp_dtype=torch.bfloat16)
        fp32 = ours(images, amp_dtype=None)
    for stride in (1, 2, 4):
        assert got[stride].dtype == torch.bfloat16
        torch.testing.assert_close(got[stride].float(), fp32[stride], rtol=0.05, atol=0.1)
