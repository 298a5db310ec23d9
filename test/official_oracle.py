"""Access to the official RoMa v2 2.0.1 package (PyPI ``romav2``) as a test oracle.

The official package cannot be imported as is on a CPU-torch machine without internet:
* PyPI's torchvision does not import beside CPU torch 2.13 ("operator torchvision::nms does not
  exist"), and romav2 only needs ``torchvision.models.vgg19_bn(weights=None).features``;
  ``install_torchvision_shim`` provides exactly that (the standard VGG19-BN layer list).
* Its DINOv3 comes from ``torch.hub.load`` (GitHub); ``build_official_model`` injects a
  backbone instance of ours instead, and stubs the weight download.

Nothing here is imported by the package; only the tests use it.
"""
from __future__ import annotations

import contextlib
import sys
import types
from unittest import mock

import torch
from torch import nn

_VGG19_LAYOUT = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M',
                 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M']


def _vgg19_bn(weights=None, **_):
    layers, in_ch = [], 3
    for v in _VGG19_LAYOUT:
        if v == 'M':
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_ch = v
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    return model


def install_torchvision_shim() -> None:
    """Put a minimal ``torchvision.models`` into ``sys.modules`` (idempotent)."""
    if getattr(sys.modules.get('torchvision'), '_romav2_ros_shim', False):
        return
    tv = types.ModuleType('torchvision')
    tv._romav2_ros_shim = True
    models = types.ModuleType('torchvision.models')
    models.vgg19_bn = _vgg19_bn
    models.vgg19 = None  # the vgg19 variant has no released weights; never used
    models.VGG19_BN_Weights = types.SimpleNamespace(IMAGENET1K_V1=None)
    models.VGG19_Weights = types.SimpleNamespace(IMAGENET1K_V1=None)
    tv.models = models
    sys.modules['torchvision'] = tv
    sys.modules['torchvision.models'] = models


def import_official():
    """Import and return the official ``romav2`` package (with the torchvision shim)."""
    install_torchvision_shim()
    import romav2  # noqa: F401  (the official package, a test dependency only)
    return romav2


@contextlib.contextmanager
def _official_construction(backbone_factory):
    romav2 = import_official()
    from romav2 import romav2 as romav2_module
    with mock.patch.object(torch.hub, 'load', side_effect=lambda *a, **k: backbone_factory()), \
            mock.patch.object(torch.hub, 'load_state_dict_from_url', return_value=None), \
            mock.patch.object(romav2_module.RoMaV2, 'load_state_dict', lambda *a, **k: None):
        yield romav2


@contextlib.contextmanager
def no_autocast():
    """The official code has hard-coded autocast regions; a no-op makes it all-fp32 (together
    with ``fp32_cfg_overrides``; the mv-ViT RoPE stays bf16, as the official computes it)."""
    with mock.patch.object(torch, 'autocast', lambda *a, **k: contextlib.nullcontext()):
        yield


def fp32_cfg_overrides() -> dict:
    """``RoMaV2.Cfg`` overrides that switch the official DINOv3 and matcher amp off."""
    romav2 = import_official()
    return dict(descriptor=romav2.features.Descriptor.Cfg(enable_amp=False),
                matcher=romav2.matcher.Matcher.Cfg(enable_amp=False))


def build_official_model(backbone_factory, setting: str = 'base', cfg_overrides=None):
    """Build the official ``RoMaV2`` with ``backbone_factory()`` as its DINOv3 (no download).

    ``backbone_factory`` must return a fresh module with ``.blocks`` (24),
    ``get_intermediate_layers(x, n=[11, 17])`` returning ``(B, HW, 1024)`` patch tokens after the
    final norm, and parameter names matching the checkpoint's ``f.*``. The official wrapper
    monkeypatches ``type(backbone).forward``, so the factory must return an instance of a
    throw-away subclass. Load weights afterwards with ``nn.Module.load_state_dict``.
    """
    with _official_construction(backbone_factory) as romav2:
        cfg = romav2.RoMaV2.Cfg(setting=setting, **(cfg_overrides or {}))
        model = romav2.RoMaV2(cfg)
    return model
