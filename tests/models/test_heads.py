import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from naslung.models.heads import AMSoftmaxHead, ASoftmaxHead, SoftmaxHead, chebyshev_cos_m, make_head, psi


def _unit_head(cls, **kw):
    """A 2-D head whose class weights are the axes, so cos(theta_0) is set by the input's angle."""
    head = cls(2, 2, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    return head


def _psi_ref(theta, m=4):
    k = math.floor(m * theta / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def test_chebyshev_matches_cos_m_theta():
    theta = torch.linspace(0, math.pi, 50, dtype=torch.float64)
    for m in (1, 2, 3, 4):
        assert torch.allclose(chebyshev_cos_m(torch.cos(theta), m), torch.cos(m * theta), atol=1e-9)


def test_psi_is_continuous_and_decreasing():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    p = psi(torch.cos(theta), 4)
    assert p[0] == pytest.approx(1.0)
    assert p[-1] == pytest.approx(-7.0, abs=1e-6)  # psi(pi) = -(2m - 1)
    assert (p.diff() <= 1e-9).all()
    assert p.diff().abs().max() < 0.02  # no jumps at k pi / m


@pytest.mark.parametrize("theta", [0.3, 1.0, 2.0])
@pytest.mark.parametrize("lam", [0.0, 5.0, 100.0])
def test_asoftmax_target_logit_matches_formula(theta, lam):
    head = _unit_head(ASoftmaxHead, m=4)
    r = 3.5
    x = torch.tensor([[r * math.cos(theta), r * math.sin(theta)]])
    plain = head(x)
    margin = head.margin_logits(x, torch.tensor([0]), lam=lam)
    expected = r * (lam * math.cos(theta) + _psi_ref(theta)) / (1 + lam)
    assert margin[0, 0].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert plain[0, 0].item() == pytest.approx(r * math.cos(theta), rel=1e-5)
    # the other class's logit is untouched: |x| cos(angle to class 1)
    assert margin[0, 1].item() == pytest.approx(plain[0, 1].item(), rel=1e-6)
    if lam <= 5.0:
        assert margin[0, 0].item() < r * math.cos(theta) - 0.05


def test_asoftmax_margin_depends_on_target_and_anneals():
    head = _unit_head(ASoftmaxHead)
    x = torch.tensor([[2.0, 1.0]])
    early = head.margin_logits(x, torch.tensor([0]), step=0)
    late = head.margin_logits(x, torch.tensor([0]), step=10_000)
    plain = head(x)
    gap_early = (plain - early)[0, 0].item()
    gap_late = (plain - late)[0, 0].item()
    assert 0 < gap_early < gap_late
    assert head.lambda_at(0) == 1500.0
    assert head.lambda_at(10) == pytest.approx(750.0)
    assert head.lambda_at(10_000) == 5.0
    other = head.margin_logits(x, torch.tensor([1]), step=10_000)
    assert other[0, 0].item() == pytest.approx(plain[0, 0].item())
    assert other[0, 1].item() < plain[0, 1].item()


def test_amsoftmax_subtracts_scaled_margin_from_target_only():
    head = _unit_head(AMSoftmaxHead, margin=0.35, scale=30.0)
    x = torch.tensor([[3.0, 4.0]])  # cos to class 0 = 0.6, class 1 = 0.8
    assert torch.allclose(head(x), torch.tensor([[18.0, 24.0]]), atol=1e-4)
    ml = head.margin_logits(x, torch.tensor([1]))
    assert torch.allclose(ml, torch.tensor([[18.0, 30 * (0.8 - 0.35)]]), atol=1e-4)


def test_softmax_head_has_no_margin():
    head = SoftmaxHead(5, 2)
    x = torch.randn(4, 5)
    assert torch.equal(head(x), head.margin_logits(x, torch.zeros(4, dtype=torch.long)))


def test_make_head_defaults_and_errors():
    assert make_head("asoftmax", 8).m == 4
    assert make_head("amsoftmax", 8, margin=0.2, scale=10).margin == 0.2
    with pytest.raises(ValueError):
        make_head("arcface", 8)
    with pytest.raises(ValueError):
        ASoftmaxHead(8, 2, m=2.5)


def _train_toy(kind: str, seed: int, lam: float | None = None) -> float:
    """Angle (degrees) between the two classes' mean embedding directions after training."""
    g = torch.Generator().manual_seed(seed)
    n = 256
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) + (y[:, None] * 2 - 1) * torch.tensor([1.0, 0.5, 0.0, 0.0])
    torch.manual_seed(seed)
    feat = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    head = make_head(kind, 3, 2)
    opt = torch.optim.Adam([*feat.parameters(), *head.parameters()], lr=1e-2)
    for it in range(300):
        loss = F.cross_entropy(head.margin_logits(feat(x), y, step=it, lam=lam), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        e = F.normalize(feat(x), dim=1)
        c0, c1 = F.normalize(e[y == 0].mean(0), dim=0), F.normalize(e[y == 1].mean(0), dim=0)
        return math.degrees(math.acos(float((c0 * c1).sum().clamp(-1, 1))))


@pytest.mark.parametrize("seed", [0, 1])
def test_margin_separates_classes_by_a_larger_angle(seed):
    with_margin = _train_toy("asoftmax", seed)
    plain_softmax = _train_toy("softmax", seed)
    no_margin = _train_toy("asoftmax", seed, lam=1e9)  # the seed's broken loss: margin never applied
    assert with_margin > plain_softmax + 3
    assert with_margin > no_margin + 3
