"""Issue 17, item 8 (training side): one decision threshold, checkpoints that cannot escape their
directory, and weights hashed on the bytes that are loaded."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from naslung.models import ModelConfig, build_model, get_config
from naslung.train import TrainConfig
from naslung.train import cv as cv_mod
from naslung.train.checkpoint import load_checkpoint, save_checkpoint
from naslung.train.metrics import binary_metrics, predict_label
from naslung.train.trainer import FoldResult


def test_cv_predictions_and_metrics_share_one_threshold(tiny_dataset, monkeypatch):
    """A probability of exactly 0.5 is benign in folds.csv rows as in the metrics (it used to be
    malignant in the rows: p >= 0.5 there, p > 0.5 in metrics.py)."""
    cfg = get_config("tiny")
    k = int(tiny_dataset.folds.max()) + 1
    ps = [0.5, 0.5000001, 0.4999999, 0.9, 0.1]

    def fake_train_fold(ds, model_cfg, train_cfg, f, progress=True, data=None, build=None):
        from naslung.data.folds import split_fold

        sp = split_fold(ds.folds, f)
        p = np.array([ps[i % len(ps)] for i in range(len(sp.test))])
        test_proba = np.stack([1 - p, p], 1)
        m = binary_metrics(ds.labels[sp.test], p)
        return FoldResult(f, model_cfg, train_cfg, {}, m, m, [], test_proba[:0], test_proba,
                          sp.train, sp.val, sp.test)

    monkeypatch.setattr(cv_mod, "train_fold", fake_train_fold)
    monkeypatch.setattr(cv_mod.DeviceData, "from_dataset", staticmethod(lambda ds, device: None))
    res = cv_mod.cross_validate(tiny_dataset, cfg, TrainConfig(epochs=1, device="cpu"), progress=False)
    rows = res.predictions
    assert len(rows) == len(tiny_dataset) and k >= 3
    assert any(r["p_malignant"] == 0.5 for r in rows)
    for r in rows:
        assert r["pred"] == int(r["p_malignant"] > 0.5), r
    tp = sum(r["pred"] == 1 and r["label"] == 1 for r in rows)
    fp = sum(r["pred"] == 1 and r["label"] == 0 for r in rows)
    assert res.confusion[1][1] == tp and res.confusion[0][1] == fp
    assert predict_label([0.5, 0.51]).tolist() == [0, 1]


def _ckpt(tmp_path):
    cfg = ModelConfig(stages=((4,), (8,)), in_size=16)
    torch.manual_seed(0)
    return cfg, save_checkpoint(tmp_path / "ck", cfg, build_model(cfg).state_dict(), {"val": {"auc": 0.5}})


@pytest.mark.parametrize("weights", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", ""])
def test_checkpoint_refuses_weights_outside_its_directory(tmp_path, weights):
    cfg, d = _ckpt(tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    meta = json.loads((d / "checkpoint.json").read_text())
    meta["weights"] = weights
    (d / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights"):
        load_checkpoint(d, verify=False)


class _SwapAfterFirstRead:
    """Replace ``path`` with ``replacement`` bytes as soon as Python code has read it once and
    closed it: what a file swapped between "hash it" and "load it" looks like."""

    def __init__(self, monkeypatch, path, replacement: bytes) -> None:
        self.path, self.replacement, self.swapped = str(path), replacement, False
        real_open = io.open

        def spy_open(file, mode="r", *a, **kw):
            f = real_open(file, mode, *a, **kw)
            if not self.swapped and "r" in mode and str(file) == self.path:
                real_close = f.close

                def close():
                    real_close()
                    if not self.swapped:
                        self.swapped = True
                        with real_open(self.path, "wb") as g:
                            g.write(self.replacement)
                f.close = close
            return f

        monkeypatch.setattr(io, "open", spy_open)
        monkeypatch.setattr("builtins.open", spy_open)


def test_checkpoint_loads_the_bytes_it_hashed(tmp_path, monkeypatch):
    from safetensors.torch import save as st_save

    cfg, d = _ckpt(tmp_path)
    weights = d / "model.safetensors"
    good = load_checkpoint(d).state_dict
    evil = st_save({k: torch.full_like(v, 7) if v.is_floating_point() else v for k, v in good.items()})
    swap = _SwapAfterFirstRead(monkeypatch, weights.resolve(), evil)
    try:
        ck = load_checkpoint(d)
    except ValueError:
        ck = None  # refusing is fine too; loading the swapped weights as "verified" is not
    assert swap.swapped
    if ck is not None:
        for k, v in good.items():
            assert torch.equal(ck.state_dict[k], v), k


def test_bundle_loads_the_bytes_it_hashed(tmp_path, monkeypatch):
    from safetensors.torch import load as st_load, save as st_save

    from naslung.data.spec import CropSpec
    from naslung.ensemble import BundleMember, load_bundle, save_bundle
    from naslung.ensemble.bundle import BundleError

    cfg = ModelConfig(stages=((4,), (8,)), in_size=16)
    torch.manual_seed(0)
    sd = build_model(cfg).state_dict()
    out = save_bundle(tmp_path / "b", [BundleMember("m0", cfg, sd)], CropSpec(size=16))
    wfile = next((out / "members").glob("*.safetensors"))
    good = st_load(wfile.read_bytes())
    evil = st_save({k: torch.full_like(v, 7) if v.is_floating_point() else v for k, v in good.items()})
    swap = _SwapAfterFirstRead(monkeypatch, wfile.resolve(), evil)
    try:
        ens = load_bundle(out)
    except BundleError:
        ens = None
    assert swap.swapped
    if ens is not None:
        loaded = ens.models[0].state_dict() if hasattr(ens, "models") else None
        assert loaded is not None
        for k, v in good.items():
            assert torch.equal(loaded[k].cpu(), v), k
