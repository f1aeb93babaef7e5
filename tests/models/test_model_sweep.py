"""One sweep over every registered model and sampled search-space architectures (after timm's
test_models): forward, backward, and the fast engine equal to the plain network."""
import numpy as np
import pytest
import torch

from naslung.ensemble import Ensemble
from naslung.ensemble.engine import FastEnsemble
from naslung.models import MODEL_REGISTRY, build_model
from naslung.models.cbam import VARIANTS
from search_spaces.space import SpaceSpec, sample_arch

SIZE = 16
_space = SpaceSpec(widths=(4, 8, 16), min_blocks=3, max_blocks=5, in_size=SIZE)
_rng = np.random.default_rng(0)
SAMPLED = [sample_arch(_space, _rng).to_config(_space, name=f"sampled-{i}") for i in range(6)]
# every CBAM variant at least once among the sampled ones
SAMPLED += [SAMPLED[0].__class__(**{**SAMPLED[0].to_dict(), "cbam": v, "name": f"cbam-{v}",
                                    "stages": SAMPLED[0].stages}) for v in VARIANTS]
CONFIGS = {name: cfg for name, cfg in MODEL_REGISTRY.items() if name != "naslung-main"}  # 28.5 M: too slow
CONFIGS.update({c.name: c for c in SAMPLED})


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_forward_backward_and_fast_engine(name):
    import dataclasses

    cfg = dataclasses.replace(CONFIGS[name], in_size=SIZE)
    torch.manual_seed(0)
    model = build_model(cfg)
    x, y = torch.rand(3, 1, SIZE, SIZE, SIZE), torch.tensor([0, 1, 1])
    loss = torch.nn.functional.cross_entropy(model.margin_logits(x, y, lam=5.0), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model = _randomize_bn(model).eval()
    p = model.predict_proba(x)
    assert p.shape == (3, 2) and torch.allclose(p.sum(1), torch.ones(3))
    fast = FastEnsemble(Ensemble([model], names=[name]), "cpu", compile=False)
    torch.testing.assert_close(fast.member_proba(x)[0], p.detach(), rtol=0, atol=5e-6)
