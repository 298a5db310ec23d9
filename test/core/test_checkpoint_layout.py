"""The whole model against the checkpoint's key table, and ``weights.load_state_dict`` errors.

``romav2_core.model.RoMaV2()`` must hold exactly the 907 tensors of ``romav2.0.1.pt`` (names,
shapes, dtypes under the default official precision policy) so the official weights load
with ``strict=True``; a damaged or foreign file must fail with a ``WeightsError`` naming the
problem, never with a bare torch/pickle error or a half-loaded model.
"""
from __future__ import annotations

import pytest
import torch

from checkpoint_keys import checkpoint_entries, checkpoint_rows, state_dict_from_rows
from romav2_core import weights
from romav2_core.model import RoMaV2
from romav2_core.vgg import VGG19BNFeatures

#: Non-fp32 tensors outside DINOv3 under the official policy: the mv-ViT's RoPE periods are
#: stored in bf16 and the matcher's ``scale`` is an int64 scalar (besides the BN counters).
_BF16_OUTSIDE_BACKBONE = {'matcher.mv_vit.rope_embed.periods'}
_INT64_SCALARS = {'matcher.scale'}


@pytest.fixture(scope='module')
def model() -> RoMaV2:
    """The full model with the default config (official precision policy); ~12 s to build."""
    return RoMaV2()


def _expected_dtype(key: str) -> torch.dtype:
    if key.startswith('f.') or key in _BF16_OUTSIDE_BACKBONE:
        return torch.bfloat16
    if key.endswith('.num_batches_tracked') or key in _INT64_SCALARS:
        return torch.int64
    return torch.float32


def test_key_table_is_complete():
    rows = checkpoint_rows()
    assert len(rows) == weights.NUM_KEYS == 907
    assert len({key for key, _, _ in rows}) == 907, 'duplicate keys in the table'
    # The table itself follows the official policy (guards against a stale copy).
    assert all(dtype == _expected_dtype(key) for key, _, dtype in rows)


def test_state_dict_is_the_checkpoint_layout(model):
    state = model.state_dict()
    # Same keys (load_state_dict matches by name; the order within refiners.* differs from
    # the official's module registration order, which changes nothing).
    table_keys = [key for key, _, _ in checkpoint_rows()]
    assert len(state) == 907 and set(state) == set(table_keys)
    got = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    expected = checkpoint_entries()
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f'{len(wrong)} tensors differ (ours, table), e.g. {next(iter(wrong.items()))}'
    assert all(v.dtype == _expected_dtype(k) for k, v in state.items())


def test_strict_load_of_a_table_state_dict(model):
    state = state_dict_from_rows(fill='random', seed=3)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    for key in ('f.blocks.0.attn.qkv.weight', 'matcher.head.projects.0.weight',
                'refiners.4.proj.weight', 'refiner_features.layers.0.weight', 'matcher.scale'):
        assert torch.equal(loaded[key], state[key]), key


def test_missing_file_is_a_weights_error(model, tmp_path):
    missing = tmp_path / 'romav2.0.1.pt'
    with pytest.raises(weights.WeightsError, match='does not exist') as info:
        weights.load_state_dict(weights.resolve_weights(missing), expected=model.state_dict())
    assert str(missing) in str(info.value)


def test_truncated_file_is_a_weights_error(model, tmp_path):
    path = tmp_path / 'romav2.0.1.pt'
    torch.save({'a': torch.randn(256, 256), 'b': torch.randn(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(weights.WeightsError, match='not a readable PyTorch checkpoint') as info:
        weights.load_state_dict(path, expected=model.state_dict())
    assert 'truncated' in str(info.value) and str(path) in str(info.value)


def test_foreign_state_dict_is_a_weights_error(model, tmp_path):
    path = tmp_path / 'vgg.pt'
    torch.save(VGG19BNFeatures().state_dict(), path)
    with pytest.raises(weights.WeightsError, match='is not a RoMa v2 2.0.1 checkpoint') as info:
        weights.load_state_dict(path, expected=model.state_dict())
    message = str(info.value)
    n_foreign = len(VGG19BNFeatures().state_dict())  # unprefixed: no key in common
    assert '907 missing keys' in message and f'{n_foreign} unexpected keys' in message
    assert '907 keys' in message
