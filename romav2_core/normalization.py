"""ImageNet normalisation of RGB images in [0, 1], shared by the DINOv3 and VGG19-BN inputs."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

#: torchvision's ImageNet channel statistics (RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_mean_std(device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """fp32 ``mean``, ``std`` shaped ``[1 x 3 x 1 x 1]``, to broadcast over ``[B x 3 x H x W]``."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def imagenet_normalize(images: Tensor, mean: Optional[Tensor] = None,
                       std: Optional[Tensor] = None) -> Tensor:
    """``(images - mean) / std`` per RGB channel of ``[B x 3 x H x W]`` images.

    ``mean``/``std`` default to :func:`imagenet_mean_std` on the images' device (a module can
    pass its own buffers instead). They are fp32, and autocast leaves these element-wise ops
    alone, so fp32 images stay fp32 even under the bf16 policy.
    """
    if mean is None or std is None:
        mean, std = imagenet_mean_std(images.device)
    return (images - mean) / std
