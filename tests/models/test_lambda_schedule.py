"""A-Softmax lambda annealed by fraction of training: the margin must actually act."""
import pytest
import torch

from naslung.models.heads import ASoftmaxHead, LambdaSchedule, margin_share


@pytest.mark.parametrize("total", [30, 600, 100_000])
def test_schedule_reaches_its_floor_at_the_given_fraction_whatever_the_steps(total):
    s = LambdaSchedule(start=1500.0, floor=5.0, floor_at=0.5, total_steps=total)
    assert s(0) == 1500.0
    assert s(total // 2) == pytest.approx(5.0, rel=0.1)
    assert s(total // 2 + 1) == pytest.approx(5.0, rel=0.02)
    assert s(total) == 5.0
    values = [s(i) for i in range(0, total + 1, max(1, total // 50))]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone


def test_old_per_step_schedule_left_the_margin_inert_on_small_data():
    """~10 steps an epoch x 60 epochs: SphereFace's per-iteration schedule is still at ~25 (4 %
    margin); the fraction schedule has the full 1/6 for the second half of training."""
    head = ASoftmaxHead(4, m=4)
    assert margin_share(head.lambda_at(600)) < 0.05
    assert margin_share(LambdaSchedule(total_steps=600)(450)) == pytest.approx(1 / 6)


@pytest.mark.parametrize("kw, match", [({"start": 1.0, "floor": 5.0}, "start >= floor"),
                                       ({"floor": 0.0}, "floor > 0"), ({"floor_at": 0.0}, "floor_at"),
                                       ({"floor_at": 1.5}, "floor_at"), ({"total_steps": 0}, "total_steps")])
def test_schedule_refuses_nonsense(kw, match):
    with pytest.raises(ValueError, match=match):
        LambdaSchedule(**kw)


def test_scheduled_lambda_changes_the_training_logits():
    torch.manual_seed(0)
    head = ASoftmaxHead(8, m=4)
    emb, y = torch.randn(6, 8), torch.tensor([0, 1, 0, 1, 1, 0])
    early = head.margin_logits(emb, y, lam=LambdaSchedule(total_steps=100)(0))
    late = head.margin_logits(emb, y, lam=LambdaSchedule(total_steps=100)(100))
    plain = head(emb)
    assert torch.allclose(early, plain, atol=2e-2)             # lambda 1500: almost plain
    target = late.gather(1, y[:, None])
    assert (target < plain.gather(1, y[:, None]) - 1e-3).all()  # margin lowers the target logit
