"""RoMa v2 dense feature matcher in pure PyTorch (no ROS imports).

``from romav2_core import RoMaV2`` works as ``from romav2 import RoMaV2`` does for the official
package (also ``RoMaV2Config``, ``ImageFeatures``). The names are imported on first use, so
importing a light submodule (``romav2_core.geometry``) does not build the whole model module.
"""
from __future__ import annotations

_EXPORTS = {'RoMaV2': 'romav2_core.model', 'ImageFeatures': 'romav2_core.model',
            'RoMaV2Config': 'romav2_core.config'}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
