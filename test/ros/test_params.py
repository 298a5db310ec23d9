"""Parameter table, validation and the parameter -> config mapping (no DDS)."""
import pytest
from rclpy.parameter import Parameter

from romav2_ros import params
from romav2_ros.pipeline import OUTPUTS

DEFAULTS = {p.name: p.default for p in params.PARAMS}


def test_every_parameter_is_described_and_ranged():
    for p in params.PARAMS:
        d = params.descriptor(p)
        assert d.description and d.read_only == (not p.runtime)
        if p.range is not None and not isinstance(p.default, bool):
            assert d.integer_range or d.floating_point_range, p.name
        assert params.check(p.name, p.default) is None, p.name
    runtime = {p.name for p in params.PARAMS if p.runtime}
    assert {'certainty_threshold', 'viz_rate', 'num_samples'} <= runtime
    assert {f'publish_{k}' for k in OUTPUTS} <= runtime
    assert not runtime & {'mode', 'setting', 'weights', 'device', 'model_source'}


@pytest.mark.parametrize('name,value,fragment', [
    ('certainty_threshold', 1.5, 'out of range'),
    ('mode', 'panorama', 'one of'),
    ('setting', 'ultra', 'one of'),
    ('device', 'tpu', 'device'),
    ('H_hr', 1000, 'multiple of 16'),
    ('input_qos', 'fast', 'one of'),
    ('max_stamp_jump', 0.0, 'out of range'),       # 0 would reset the sequence every frame
])
def test_bad_values_are_rejected_with_a_reason(name, value, fragment):
    result = params.validate([Parameter(name, value=value)])
    assert not result.successful and fragment in result.reason
    assert params.validate([Parameter('use_sim_time', value=True)]).successful


def test_model_config_mapping():
    cfg = params.model_config(DEFAULTS)
    assert (cfg.setting, cfg.H_lr, cfg.H_hr, cfg.bidirectional) == ('base', 640, None, False)
    # B -> A only when asked, whatever the preset says (no output uses it)
    cfg = params.model_config({**DEFAULTS, 'setting': 'precise'})
    assert (cfg.H_lr, cfg.H_hr, cfg.bidirectional) == (800, 1280, False)
    cfg = params.model_config({**DEFAULTS, 'setting': 'fast', 'H_lr': 384, 'W_lr': 512,
                               'bidirectional': True, 'precision': 'fp16'})
    assert (cfg.H_lr, cfg.W_lr, cfg.bidirectional, cfg.amp_dtype) == (384, 512, True, 'fp16')
    assert params.model_config({**DEFAULTS, 'H_hr': -1, 'W_hr': -1}).H_hr is None


def test_resolutions_the_device_cannot_hold_are_refused():
    """4096 x 4096 needs ~3 (256 * 256)^2 fp32 values for the coarse match embedding
    (51 GiB): refused before any model is built, with the reason."""
    from romav2_core.capacity import coarse_match_bytes
    assert coarse_match_bytes(4096, 4096) == 3 * (256 * 256) ** 2 * 4
    with pytest.raises(ValueError, match='coarse match embedding'):
        params.model_config({**DEFAULTS, 'device': 'cpu', 'H_lr': 4096, 'W_lr': 4096})
    assert params.model_config({**DEFAULTS, 'device': 'cpu', 'H_lr': 1024,
                                'W_lr': 1024}).H_lr == 1024


def test_precision_mapping(monkeypatch):
    from romav2_core import precision
    fp32 = params.model_config({**DEFAULTS, 'device': 'cpu', 'precision': 'fp32'})
    assert not (fp32.backbone_amp or fp32.matcher_amp or fp32.dpt_amp or fp32.refiner_amp)
    # auto: the official bf16 policy only where bf16 is native, fp32 where it is emulated.
    monkeypatch.setattr(precision, 'fast_bf16', lambda device: True)
    auto = params.model_config({**DEFAULTS, 'device': 'cpu', 'precision': 'auto'})
    assert auto.backbone_amp and auto.amp_dtype == 'bf16'
    monkeypatch.setattr(precision, 'fast_bf16', lambda device: False)
    auto = params.model_config({**DEFAULTS, 'device': 'cpu', 'precision': 'auto'})
    assert auto == auto.all_fp32()


def test_pipeline_config_mapping():
    cfg = params.pipeline_config({**DEFAULTS, 'mode': 'sequential', 'num_samples': 123,
                                  'max_image_pixels': 640 * 480})
    assert cfg.max_image_pixels == 640 * 480
    assert (cfg.mode, cfg.num_samples, cfg.certainty_threshold) == ('sequential', 123, 0.05)
    assert cfg.seed == DEFAULTS['random_seed']


def test_qos_profiles():
    from rclpy.qos import ReliabilityPolicy
    assert params.qos_profile('sensor_data', 5).reliability == ReliabilityPolicy.BEST_EFFORT
    assert params.qos_profile('reliable', 3).depth == 3


def test_the_readme_parameter_table_is_the_declared_one():
    """README.md shows ``python -m romav2_ros.param_table``'s output: it cannot drift from
    the parameters the node declares."""
    from pathlib import Path

    from romav2_ros import param_table
    readme = (Path(__file__).resolve().parents[2] / 'README.md').read_text()
    assert param_table.table() in readme
    assert param_table.table(params.LIFECYCLE_PARAMS) in readme


def test_the_node_model_is_a_probability_in_every_setting():
    """The mega1500 family's threshold (overlap above 0.05 forced to 1 in the official
    match(), a benchmark sampling quirk) is not applied: ~/certainty is the model's
    probability; and a random model at that config returns sigmoid values below 1."""
    import torch
    from romav2_core.model import RoMaV2
    cfg = params.model_config({**DEFAULTS, 'setting': 'mega1500', 'device': 'cpu',
                               'H_lr': 64, 'W_lr': 64, 'H_hr': -1, 'W_hr': -1})
    assert cfg.threshold is None
    model = RoMaV2.from_random(seed=0, **{k: v for k, v in vars(cfg).items()
                                          if k != 'setting'}, setting='mega1500')
    model.threshold = cfg.threshold
    img = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    overlap = model.match(img, img)['overlap_AB']
    assert 0 < float(overlap.min()) and float(overlap.max()) < 1 and \
        float((overlap > 0.05).float().mean()) > 0.5


def test_cross_parameter_rules_are_checked_against_the_current_values():
    """min_disparity must stay below max_disparity, tracking_min_overlap not above
    keyframe_overlap: a runtime change that breaks the rule is refused with the reason."""
    ok = params.validate([Parameter('min_disparity', value=10.0)], DEFAULTS)
    assert ok.successful
    bad = params.validate([Parameter('min_disparity', value=300.0)], DEFAULTS)
    assert not bad.successful and 'max_disparity' in bad.reason
    bad = params.validate([Parameter('tracking_min_overlap', value=0.9)], DEFAULTS)
    assert not bad.successful and 'keyframe_overlap' in bad.reason
    both = params.validate([Parameter('min_disparity', value=300.0),
                            Parameter('max_disparity', value=400.0)], DEFAULTS)
    assert both.successful
