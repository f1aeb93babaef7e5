"""NAS-Lung's ResCBAMLayer as written (voxel softmax), as a CBAM variant, against the formula."""
import pytest
import torch

from naslung.models import ModelConfig, build_model
from naslung.models.cbam import CBAM_STYLES, CBAM3d


def reference_rescbam(layer: CBAM3d, x: torch.Tensor) -> torch.Tensor:
    """The published forward, spelt out: channel softmax of MLP(avg) + MLP(max), spatial conv of
    [max, mean] over channels, softmax over all voxels, output s * x + x."""
    n, c = x.shape[:2]
    fc1, fc2 = layer.channel_gate.fc1.weight, layer.channel_gate.fc2.weight
    mlp = lambda v: v @ fc1.T @ fc2.T  # noqa: E731  (no hidden activation)
    ch = torch.softmax(mlp(x.mean(dim=(2, 3, 4))) + mlp(x.amax(dim=(2, 3, 4))), dim=1)
    xc = ch[:, :, None, None, None] * x
    desc = torch.cat([xc.max(1, keepdim=True)[0], xc.sum(1, keepdim=True) / c], dim=1)
    sp = torch.nn.functional.conv3d(desc, layer.spatial_gate.conv.weight, padding=1)
    sp = torch.softmax(sp.view(n, -1), dim=1).view(n, 1, *x.shape[2:])
    return sp * x + x


def test_exact_variant_matches_the_published_formula():
    torch.manual_seed(0)
    layer = CBAM3d(8, "naslung-exact")
    x = torch.randn(3, 8, 5, 6, 7)
    torch.testing.assert_close(layer(x), reference_rescbam(layer, x), rtol=1e-5, atol=1e-6)


def test_exact_spatial_map_is_a_distribution_over_voxels_unlike_the_sigmoid_variant():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 4, 4)
    exact, sig = CBAM3d(8, "naslung-exact"), CBAM3d(8, "naslung")
    m = exact.spatial_gate(exact.channel_gate(x) * x)
    torch.testing.assert_close(m.flatten(1).sum(1), torch.ones(2))
    s = sig.spatial_gate(sig.channel_gate(x) * x)
    assert not torch.allclose(s.flatten(1).sum(1), torch.ones(2), atol=0.5)


def test_styles_name_every_deviation():
    assert CBAM_STYLES["naslung"].spatial_act == "sigmoid"
    assert CBAM_STYLES["naslung-exact"].spatial_act == "softmax"
    assert {k: v for k, v in vars(CBAM_STYLES["naslung"]).items() if k != "spatial_act"} == \
        {k: v for k, v in vars(CBAM_STYLES["naslung-exact"]).items() if k != "spatial_act"}
    with pytest.raises(ValueError, match="CBAM variant"):
        CBAM3d(4, "naslung-sigmoid")
    with pytest.raises(ValueError, match="cbam"):
        ModelConfig(stages=((4,),), cbam="exact", in_size=16)


def test_exact_variant_network_trains():
    torch.manual_seed(0)
    model = build_model(ModelConfig(stages=((4,), (8,)), cbam="naslung-exact", in_size=16))
    x, y = torch.rand(4, 1, 16, 16, 16), torch.tensor([0, 1, 0, 1])
    torch.nn.functional.cross_entropy(model.margin_logits(x, y, lam=5.0), y).backward()
    grads = [p.grad for m in model.cbam_modules() for p in m[1].spatial_gate.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
