"""VGG19-BN fine features of the RoMa v2 refiners, at strides 1, 2 and 4.

The first three stages of VGG19-BN (torchvision's ``vgg19_bn().features[:26]``), written out
here so the package needs no torchvision. ``layers`` keeps torchvision's flat indexing, ReLU and
max-pool slots included, so parameter names are the checkpoint's ``refiner_features.*`` with
the prefix stripped::

    stage  stride  layers (conv, BN, ReLU per conv)        channels
    1      1       0-2, 3-5                                64
    pool           6
    2      2       7-9, 10-12                              128
    pool           13
    3      4       14-16, 17-19, 20-22, 23-25              256

romav2 2.0.1 builds ``features[:27]`` and also runs the third max-pool (index 26), whose output
it discards; it is left out here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from romav2_core.conv_bn import conv_bn
from romav2_core.normalization import imagenet_normalize
from romav2_core.precision import autocast_region

#: Conv widths per stage; a 2x2 max-pool separates consecutive stages.
_STAGES = ((64, 64), (128, 128), (256, 256, 256, 256))


class VGG19BNFeatures(nn.Module):
    """RGB images ``[B x 3 x H x W]`` -> VGG19-BN features ``{stride: [B x H/s x W/s x C]}``.

    Use in eval mode: BatchNorm applies the checkpoint's running statistics (eps 1e-5).
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for stage, widths in enumerate(_STAGES):
            if stage:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for ch in widths:
                # In-place ReLU is safe: it only overwrites the fresh BatchNorm output.
                layers += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.BatchNorm2d(ch),
                           nn.ReLU(inplace=True)]
                in_ch = ch
        self.layers = nn.ModuleList(layers)

    def forward(self, images: Tensor, amp_dtype: torch.dtype | None = None,
                normalized: bool = False) -> dict[int, Tensor]:
        """Fine features at strides 1, 2 and 4.

        Args:
            images: ``[B x 3 x H x W]`` fp32 RGB in [0, 1]; H and W divisible by 4. With
                ``normalized``, already ImageNet-normalised (``RoMaV2`` normalises once for
                both encoders).
            amp_dtype: autocast dtype for the conv stack; None computes in fp32. The official
                hard-codes ``torch.autocast("cuda", torch.bfloat16)``, which is bf16 on CUDA and
                has no effect on CPU: to reproduce it, the model composition passes
                ``torch.bfloat16`` for CUDA inputs and None on CPU.

        Returns:
            ``{1: [B x H x W x 64], 2: [B x H/2 x W/2 x 128], 4: [B x H/4 x W/4 x 256]}``,
            post-ReLU activations taken before each max-pool, as permuted (BHWC) views of the
            BCHW activations, exactly as the official returns them. Their dtype is the compute
            dtype: fp32, or ``amp_dtype`` under autocast (the official's bf16 on CUDA);
            consumers cast with ``.float()`` as the official refiners do.
        """
        # Normalisation stays in fp32, outside autocast, as in the official.
        x = images if normalized else imagenet_normalize(images)
        feats = {}
        stride = 1
        with autocast_region(images.device.type, amp_dtype):
            for layer in self.layers:
                if isinstance(layer, nn.Conv2d):
                    conv = layer  # applied together with the BatchNorm that follows it
                    continue
                if isinstance(layer, nn.BatchNorm2d):
                    x = conv_bn(x, conv, layer)
                    continue
                if isinstance(layer, nn.MaxPool2d):
                    feats[stride] = x.permute(0, 2, 3, 1)
                    stride *= 2
                x = layer(x)
        feats[stride] = x.permute(0, 2, 3, 1)
        return feats
