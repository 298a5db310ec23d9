"""Where the node's matcher comes from: the ``model_source`` seam.

``model_source`` (a node parameter) names one of:

* ``pretrained``: ``RoMaV2.from_pretrained(weights or None, ...)`` (official weights from
  ``weights`` or the download cache; a clear error when offline and absent);
* ``random``: ``RoMaV2.from_random(seed=random_seed, ...)`` (seeded random weights: demos,
  smoke tests, timing without weights);
* a name registered with :func:`register` (by a plugin module, see below);
* ``package.module:factory``: a callable imported on demand (test doubles, custom matchers).

Plugin modules listed in the environment variable ``ROMAV2_MATCHER_PLUGINS`` (comma-separated
module names) are imported before the lookup so they can call :func:`register`.

A factory is called as ``factory(config=RoMaV2Config, device=str, weights=str, seed=int)``
and returns an object implementing ``romav2_core.interface.DenseMatcher``.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

from romav2_core.config import RoMaV2Config

PLUGINS_ENV = 'ROMAV2_MATCHER_PLUGINS'
_REGISTRY: dict[str, Callable] = {}


def register(name: str, factory: Callable) -> None:
    """Make ``model_source:=<name>`` build a matcher with ``factory`` (see module docstring)."""
    if ':' in name:
        raise ValueError(f'matcher name {name!r} must not contain ":"')
    _REGISTRY[name] = factory


def _model_kwargs(config: RoMaV2Config) -> dict:
    kwargs = {k: v for k, v in vars(config).items() if k != 'setting'}
    return {'setting': config.setting, **kwargs}


def _pretrained(config: RoMaV2Config, device: str, weights: str, seed: int):
    from romav2_core import weights as weights_io
    from romav2_core.model import RoMaV2  # lazy: torch model code only when needed
    if weights:  # a missing file fails at once, not after building the model (seconds, ~1 GB)
        weights_io.resolve_weights(weights, download=False)
    return RoMaV2.from_pretrained(weights=weights or None, device=device,
                                  **_model_kwargs(config))


def _random(config: RoMaV2Config, device: str, weights: str, seed: int):
    from romav2_core.model import RoMaV2
    return RoMaV2.from_random(seed=seed, device=device, **_model_kwargs(config))


register('pretrained', _pretrained)
register('random', _random)


def _import_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, '').split(','))):
        importlib.import_module(module)


def resolve(source: str) -> Callable:
    """The factory for ``model_source`` value ``source``; ValueError naming the choices."""
    _import_plugins()
    if source in _REGISTRY:
        return _REGISTRY[source]
    if ':' in source:
        module, _, attr = source.partition(':')
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f'model_source {source!r}: cannot import {attr!r} from '
                             f'{module!r}: {exc}') from exc
    raise ValueError(f'unknown model_source {source!r}; one of {sorted(_REGISTRY)} or '
                     f'"package.module:factory"')


def create(source: str, config: RoMaV2Config, device: str, weights: str = '', seed: int = 0):
    """Build the matcher named by ``source`` (see the module docstring)."""
    return resolve(source)(config=config, device=device, weights=weights, seed=seed)


def warm_up(matcher, device: str, mode: str) -> None:
    """The node's shapes through the model before topics open (lazy init, compilation,
    autotuning): a stereo pair (or one frame) encoded as one batch, and the pairs of one set
    matched as one batch -- stereo_odometry matches two (the stereo and the temporal pair)
    or, at a segment's first frame, one -- as many times as the compile mode needs
    (``compile.warm_up_runs``), so no live frame compiles or records."""
    import torch

    from romav2_core.compile import warm_up_runs
    from romav2_core.interface import cat_features
    h, w = matcher.output_hw
    images = 1 if mode == 'sequential' else 2
    cfg = getattr(matcher, 'cfg', None)
    runs = warm_up_runs(getattr(cfg, 'compile', 'off'))
    x = torch.randint(0, 256, (images, 3, h, w), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(runs):
            f = matcher.encode(x)
            if mode == 'stereo_odometry':
                matcher.match_features(cat_features([f[:1], f[:1]]), f)
            matcher.match_features(f[:1], f[-1:])
