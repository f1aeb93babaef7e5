from torch import nn

from naslung.models import ModelConfig, build_model, count_macs, count_params, get_config, profile_model


def test_macs_of_a_single_conv_and_linear():
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 ** 3, 2))
    expected = 4 * 8 ** 3 * 27 + 4 * 8 ** 3 * 2
    assert count_macs(net, 8) == expected


def test_macs_scale_with_input_volume():
    model = build_model(get_config("tiny"))
    a, b = count_macs(model, 16), count_macs(model, 32)
    assert 7.5 < b / a < 8.1  # convs scale with voxels; the head does not


def test_profile_model_reports_cost():
    cfg = ModelConfig(stages=((4,), (8,)), in_size=16)
    out = profile_model(cfg, "cpu", 16, repeats=3, warmup=1)
    assert out["params"] == count_params(build_model(cfg))
    assert out["flops"] == 2 * out["macs"] > 0
    assert out["latency_ms"] > 0
    wider = profile_model(ModelConfig(stages=((16,), (32,)), in_size=16), "cpu", 16, repeats=3, warmup=1)
    assert wider["params"] > out["params"] and wider["macs"] > out["macs"]


def test_profile_leaves_training_mode_untouched():
    model = build_model(get_config("tiny")).train()
    count_macs(model, 16)
    assert model.training
