"""config/*.yaml: every parameter is a declared node parameter with a value the node accepts
(``romav2_ros.params.check``, the node's own on-set validation) and the declared type (rclpy
refuses an override of another type, e.g. ``viz_rate: 5`` for a double)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from romav2_ros import params

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / 'config').glob('*.yaml'))
REQUIRED = ('stereo.yaml', 'sequential.yaml', 'desktop_gpu.yaml', 'embedded_gpu.yaml',
            'multi_camera.yaml')
BUILTIN = {'use_sim_time': bool}
CAMERA_KEYS = ('namespace', 'mode', 'params_file', 'preset', 'parameters', 'topics')


def problems(values: dict, where: str) -> list[str]:
    found = []
    for name, value in values.items():
        if name in BUILTIN:
            if not isinstance(value, BUILTIN[name]):
                found.append(f'{where}: {name}={value!r} must be {BUILTIN[name].__name__}')
            continue
        declared = params.BY_NAME.get(name)
        if declared is None:
            found.append(f'{where}: {name} is not a node parameter')
            continue
        if type(value) is not type(declared.default):
            found.append(f'{where}: {name}={value!r} is {type(value).__name__}, declared '
                         f'{type(declared.default).__name__}')
            continue
        reason = params.check(name, value)
        if reason:
            found.append(f'{where}: {reason}')
    return found


def parameter_sections(data: dict, path: Path):
    """(where, {name: value}) of a ROS 2 params file: ``<node or /**>: ros__parameters:``."""
    for node_name, section in data.items():
        assert isinstance(section, dict) and set(section) == {'ros__parameters'}, \
            f'{path.name}: {node_name} must hold only ros__parameters'
        yield f'{path.name} [{node_name}]', section['ros__parameters']


def test_required_configs_exist():
    names = {p.name for p in CONFIGS}
    assert set(REQUIRED) <= names, set(REQUIRED) - names


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parameters_are_declared_and_valid(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, path.name
    found = []
    if 'cameras' in data:  # the multi_camera.launch.py layout (not a params file)
        for i, entry in enumerate(data['cameras']):
            assert set(entry) <= set(CAMERA_KEYS) and entry.get('namespace'), entry
            where = f'{path.name} cameras[{i}]'
            found += problems(entry.get('parameters') or {}, where)
            if 'mode' in entry:
                found += problems({'mode': entry['mode']}, where)
            for ref in ('params_file', 'preset'):
                if ref in entry:
                    assert (ROOT / 'config' / f'{entry[ref]}.yaml').is_file(), entry[ref]
    else:
        for where, values in parameter_sections(data, path):
            found += problems(values, where)
    assert not found, '\n'.join(found)


def test_mode_files_set_their_mode():
    for mode in ('stereo', 'sequential'):
        values = yaml.safe_load((ROOT / 'config' / f'{mode}.yaml').read_text())
        assert values['/**']['ros__parameters']['mode'] == mode


def test_presets():
    desktop = yaml.safe_load((ROOT / 'config' / 'desktop_gpu.yaml').read_text())
    embedded = yaml.safe_load((ROOT / 'config' / 'embedded_gpu.yaml').read_text())
    desktop, embedded = (d['/**']['ros__parameters'] for d in (desktop, embedded))
    assert desktop['setting'] in ('base', 'precise')
    assert embedded['setting'] in ('turbo', 'fast')
    assert embedded['precision'] in ('bf16', 'fp16')
    # presets are hardware only: they must not change the mode of the file loaded before them
    assert 'mode' not in desktop and 'mode' not in embedded


def test_checker_rejects_bad_values():
    """The checks above are not vacuous."""
    assert problems({'setting': 'ultra'}, 'x')
    assert problems({'viz_rate': 5}, 'x')
    assert problems({'no_such_parameter': 1}, 'x')
    assert not problems({'viz_rate': 5.0, 'use_sim_time': True}, 'x')
