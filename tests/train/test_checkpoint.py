import json
import sys

import pytest
import torch

from naslung.models import ModelConfig, build_model
from naslung.train.checkpoint import load_checkpoint, save_checkpoint

CFG = ModelConfig(stages=((4,), (8,)), head="asoftmax", in_size=16, name="t")


def _trained_like_model():
    torch.manual_seed(3)
    model = build_model(CFG)
    model.train()
    model(torch.rand(4, 1, 16, 16, 16))  # move BN running stats off their defaults
    return model.eval()


def test_round_trip_reproduces_outputs(tmp_path):
    model = _trained_like_model()
    x = torch.rand(2, 1, 16, 16, 16)
    save_checkpoint(tmp_path / "ck", CFG, model.state_dict(), {"val": {"auc": 0.75}}, extra={"fold": 2})
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.model_cfg == CFG
    assert ck.metrics == {"val": {"auc": 0.75}} and ck.extra == {"fold": 2}
    loaded = ck.build_model()
    assert torch.allclose(loaded(x), model(x))
    assert torch.allclose(loaded.predict_proba(x), model.predict_proba(x))
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert ModelConfig.from_file(tmp_path / "ck" / "checkpoint.json") == CFG  # the JSON is a model config too
    assert len(meta["weights_sha256"]) == 64


def test_tampered_weights_are_rejected(tmp_path):
    model = _trained_like_model()
    save_checkpoint(tmp_path / "ck", CFG, model.state_dict(), {})
    w = tmp_path / "ck" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_checkpoint(tmp_path / "ck")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.json"):
        load_checkpoint(tmp_path)


def test_torch_fallback_without_safetensors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import raises ImportError
    model = _trained_like_model()
    save_checkpoint(tmp_path / "ck", CFG, model.state_dict(), {})
    assert (tmp_path / "ck" / "model.pt").is_file()
    ck = load_checkpoint(tmp_path / "ck")
    x = torch.rand(1, 1, 16, 16, 16)
    assert torch.allclose(ck.build_model()(x), model(x))
