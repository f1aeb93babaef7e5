import pytest
import torch

from naslung.models import MODEL_REGISTRY, ModelConfig, build_model, count_params, get_config
from naslung.models.blocks import Downsample, ResidualBlock


def test_residual_block_changes_channels_keeps_size():
    blk = ResidualBlock(4, 12)
    y = blk(torch.randn(2, 4, 8, 6, 10))
    assert y.shape == (2, 12, 8, 6, 10)


def test_downsample_halves_each_side():
    y = Downsample(6)(torch.randn(2, 6, 16, 8, 12))
    assert y.shape == (2, 6, 8, 4, 6)


@pytest.mark.parametrize("head", ["asoftmax", "softmax", "amsoftmax"])
@pytest.mark.parametrize("cbam", ["naslung", "original", "none"])
def test_network_outputs_and_proba(head, cbam):
    cfg = ModelConfig(stages=((4,), (8, 8)), head=head, cbam=cbam, in_size=16)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.rand(3, 1, 16, 16, 16)
    logits = model(x)
    assert logits.shape == (3, 2)
    assert model.embed(x).shape == (3, 8)
    p = model.predict_proba(x)
    assert p.shape == (3, 2)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(p, torch.softmax(logits, 1))
    n_cbam = len(model.cbam_modules())
    assert n_cbam == (0 if cbam == "none" else 3)  # stem + one per stage


@pytest.mark.parametrize("size", [16, 20, 32])
def test_adaptive_pooling_accepts_any_crop_size(size):
    model = build_model(get_config("tiny")).eval()
    assert model(torch.rand(1, 1, size, size, size)).shape == (1, 2)


def test_features_spatial_size_follows_stage_count():
    model = build_model(ModelConfig(stages=((4,), (8,), (8,)), in_size=32)).eval()
    assert model.features(torch.rand(1, 1, 32, 32, 32)).shape == (1, 8, 4, 4, 4)


def test_wrong_input_shape_is_a_clear_error():
    model = build_model(get_config("tiny"))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.rand(1, 16, 16, 16))


def test_registry_sizes():
    assert count_params(build_model(get_config("small"))) < 500_000
    assert 120_000 < count_params(build_model(get_config("model1"))) < 160_000  # paper: 0.14 M
    for name, cfg in MODEL_REGISTRY.items():
        assert cfg.name == name
    with pytest.raises(ValueError, match="unknown model"):
        get_config("nope")


def test_config_json_round_trip_builds_same_architecture(tmp_path):
    cfg = ModelConfig(stages=((4, 8), (16,)), head="amsoftmax", margin=0.2, scale=16.0, in_size=16)
    p = tmp_path / "m.json"
    p.write_text(cfg.to_json())
    cfg2 = ModelConfig.from_file(p)
    assert cfg2 == cfg
    m1, m2 = build_model(cfg), build_model(cfg2)
    assert {k: v.shape for k, v in m1.state_dict().items()} == {k: v.shape for k, v in m2.state_dict().items()}
    assert m2.head.scale == 16.0 and m2.head.margin == 0.2
