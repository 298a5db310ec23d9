"""The bundled sample bags: reproducible, and replayable as they are (topics found by name)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

import replay_doubles as doubles
from romav2_ros import bag_io, replay

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip('skimage')
if importlib.util.find_spec('stereodemo') is None:
    pytest.skip('stereodemo not installed (pip install --no-deps stereodemo==0.7)',
                allow_module_level=True)
sys.path.insert(0, str(ROOT / 'scripts'))
import make_sample_data  # noqa: E402


@pytest.fixture(scope='module')
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp('samples') / 'samples'
    assert make_sample_data.main(['--out', str(out)]) == 0
    return out


def test_samples_are_reproducible(samples, tmp_path):
    make_sample_data.motorcycle(tmp_path)
    for name in ('motorcycle_stereo', 'motorcycle_stereo_compressed'):
        for path in (samples / name).iterdir():
            assert path.read_bytes() == (tmp_path / name / path.name).read_bytes(), path


def test_sample_contents(samples):
    truth = json.loads((samples / 'ground_truth.json').read_text())
    assert len(truth['oakd_stereo']['scenes']) == 12
    assert len(truth['coffee_sequence']['pairs']) == make_sample_data.SEQ_FRAMES - 1
    assert 'CC BY 4.0' in (samples / 'SAMPLES.md').read_text()
    with Reader(samples / 'motorcycle_stereo') as reader:
        infos = {c.topic: bag_io.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                 if c.msgtype.endswith('CameraInfo')}
    right = infos['/stereo/right/camera_info']
    f, b = make_sample_data.MOTORCYCLE['f'], make_sample_data.MOTORCYCLE['baseline_m']
    assert right.p[3] == pytest.approx(-f * b) and right.p[2] == pytest.approx(311.193 + 31.086)
    with Reader(samples / 'oakd_stereo') as reader:
        assert {c.topic: c.msgcount for c in reader.connections}['/stereo/left/image_rect'] == 12


@pytest.mark.parametrize('bag, extra, processed', [
    ('motorcycle_stereo', ['--outputs', 'warp,disparity,depth,matches'], 1),
    ('motorcycle_stereo_compressed', ['-p', 'input_transport:=compressed', '--outputs',
                                      'warp,disparity,matches'], 1),
    ('coffee_sequence', ['--mode', 'sequential', '--outputs', 'warp,matches'],
     make_sample_data.SEQ_FRAMES - 1),
])
def test_samples_replay(samples, tmp_path, bag, extra, processed, capsys):
    args = replay.parse_args([str(samples / bag), str(tmp_path / 'out'), *extra])
    assert replay.replay(args, matcher=doubles.ShiftOracle()) == 0
    assert f'{processed} processed of' in capsys.readouterr().err
    with Reader(tmp_path / 'out') as reader:
        warps = [bag_io.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                 if c.topic == '/romav2_node/warp']
    assert len(warps) == processed
    warp = np.frombuffer(bytes(warps[0].data), np.float32).reshape(warps[0].height,
                                                                   warps[0].width, 2)
    np.testing.assert_allclose(warp[100, 300], [298.0, 100.0], atol=1e-2)
