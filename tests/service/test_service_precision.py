"""--precision: the CPU bf16 fast engine answers like fp32 (and bad choices are refused)."""
import numpy as np
import pytest
import torch

from service.predictor import EnsemblePredictor, engine_options_for, random_ensemble


def test_bf16_engine_matches_fp32_within_bf16_tolerance():
    rng = np.random.default_rng(0)
    fp32 = EnsemblePredictor(random_ensemble(["tiny", "tiny"]), engine="fast",
                             engine_options=engine_options_for("fp32"))
    bf16 = EnsemblePredictor(random_ensemble(["tiny", "tiny"]), engine="fast",
                             engine_options=engine_options_for("bf16"))
    assert fp32.runner.dtype == torch.float32 and bf16.runner.dtype == torch.bfloat16
    crops = rng.normal(-500, 300, (6, *fp32.spec.shape)).astype(np.float32)
    a, b = fp32.predict(crops), bf16.predict(crops)
    assert np.abs(a.proba - b.proba).max() <= 1e-2
    assert np.abs(a.member_proba - b.member_proba).max() <= 1e-2


def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    import service.predictor as sp

    assert engine_options_for("auto", "cuda") == {}  # the engine's CUDA default (bf16)
    monkeypatch.setattr(sp, "cpu_has_bf16", lambda: True)
    assert engine_options_for("auto", "cpu") == {"dtype": torch.bfloat16}
    monkeypatch.setattr(sp, "cpu_has_bf16", lambda: False)
    assert engine_options_for("auto", "cpu") == {"dtype": torch.float32}
    assert engine_options_for("fp32", "cuda") == {"dtype": torch.float32}
    with pytest.raises(ValueError, match="precision"):
        engine_options_for("fp8")
