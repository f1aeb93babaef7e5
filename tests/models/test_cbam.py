import torch

from naslung.models import ModelConfig, build_model
from naslung.models.cbam import CBAM3d, ChannelGate, SpatialGate


def test_softmax_channel_gate_sums_to_one():
    w = ChannelGate(8, gate="softmax")(torch.randn(3, 8, 4, 4, 4))
    assert w.shape == (3, 8, 1, 1, 1)
    assert torch.allclose(w.sum(1).flatten(), torch.ones(3), atol=1e-6)


def test_sigmoid_channel_gate_is_independent_per_channel():
    torch.manual_seed(1)
    w = ChannelGate(8, gate="sigmoid")(torch.randn(3, 8, 4, 4, 4) * 3)
    assert ((w > 0) & (w < 1)).all()
    assert not torch.allclose(w.sum(1).flatten(), torch.ones(3), atol=1e-2)


def test_spatial_gate_map_shape_and_range():
    m = SpatialGate(3)(torch.randn(2, 5, 6, 7, 8) * 10)
    assert m.shape == (2, 1, 6, 7, 8)
    assert (m >= 0).all() and (m <= 1).all()


def test_naslung_variant_output_is_residual_spatial_reweighting():
    torch.manual_seed(0)
    cbam = CBAM3d(8, "naslung")
    x = torch.randn(2, 8, 4, 4, 4)
    s = cbam.spatial_gate(cbam.channel_gate(x) * x)
    assert torch.allclose(cbam(x), s * x + x, atol=1e-6)


def test_original_variant_output_is_gated_features():
    torch.manual_seed(0)
    cbam = CBAM3d(8, "original")
    x = torch.randn(2, 8, 4, 4, 4)
    xc = cbam.channel_gate(x) * x
    assert torch.allclose(cbam(x), cbam.spatial_gate(xc) * xc, atol=1e-6)


def test_spatial_gate_hooks_see_every_attention_map():
    model = build_model(ModelConfig(stages=((4,), (8,)), in_size=16)).eval()
    maps = []
    for _, m in model.cbam_modules():
        m.spatial_gate.register_forward_hook(lambda mod, inp, out: maps.append(out))
    model(torch.rand(2, 1, 16, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 1, 16, 16, 16), (2, 1, 8, 8, 8), (2, 1, 4, 4, 4)]
    assert all(((m >= 0) & (m <= 1)).all() for m in maps)


def test_original_spatial_gate_layout_change_keeps_the_maths():
    """The 7^3 gate runs in channels-last on a CPU (speed); output and gradients equal the plain conv's."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    gate = SpatialGate(7).double()
    x = torch.randn(2, 5, 9, 10, 11, dtype=torch.float64, requires_grad=True)
    out = gate(x)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, gate.conv.weight), g)

    x2 = x.detach().clone().requires_grad_(True)
    w2 = gate.conv.weight.detach().clone().requires_grad_(True)
    desc = torch.cat([x2.amax(dim=1, keepdim=True), x2.mean(dim=1, keepdim=True)], dim=1)
    ref = torch.sigmoid(F.conv3d(desc.contiguous(), w2, padding=3))
    rx, rw = torch.autograd.grad(ref, (x2, w2), g)
    assert out.shape == (2, 1, 9, 10, 11)
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(gx, rx, atol=1e-10) and torch.allclose(gw, rw, atol=1e-10)
