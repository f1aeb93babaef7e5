"""Fixtures for ensemble tests: tiny members with non-trivial BatchNorm statistics."""
from __future__ import annotations

import pytest
import torch

from naslung.models import build_model
from naslung.models.config import ModelConfig


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-default running statistics and affine parameters (so folding matters)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return model.eval()


# Mixed on purpose: two identical architectures (stackable), every head kind, every CBAM variant.
MEMBER_CONFIGS = [
    ModelConfig(stages=((4,), (8,)), in_size=16, name="a"),
    ModelConfig(stages=((4,), (8,)), in_size=16, name="b"),
    ModelConfig(stages=((4, 8), (8,)), in_size=16, head="amsoftmax", name="c"),
    ModelConfig(stages=((8,), (8,)), in_size=16, head="softmax", cbam="original", name="d"),
    ModelConfig(stages=((4,), (8,)), in_size=16, cbam="none", name="e"),
]


@pytest.fixture
def members() -> list[tuple[ModelConfig, torch.nn.Module]]:
    out = []
    for i, cfg in enumerate(MEMBER_CONFIGS):
        torch.manual_seed(100 + i)
        out.append((cfg, randomize_bn(build_model(cfg), seed=i)))
    return out


@pytest.fixture
def crops16() -> torch.Tensor:
    return torch.rand(5, 1, 16, 16, 16, generator=torch.Generator().manual_seed(7))
