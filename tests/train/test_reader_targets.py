"""Learning from every reader: soft labels and auxiliary ratings, from manifest columns to the loss."""
import math

import numpy as np
import pytest
import torch

from naslung.models import get_config
from naslung.train import DeviceData, TrainConfig
from naslung.train.targets import ReaderTargets, mean_rating, soft_label
from naslung.train.trainer import aux_loss, classification_loss, train_fold


def _with_ratings(ds, seed=0):
    """Reader ratings consistent with the labels (mean > 3 exactly for the malignant crops)."""
    rng = np.random.default_rng(seed)
    for r in ds.rows:
        base = [4, 5, 4, 3] if r["label"] else [1, 2, 2, 3]
        r["naslung_ratings"] = ";".join(str(int(v)) for v in rng.permutation(base))
        r["spiculation"] = str(rng.integers(1, 6)) if r["label"] else "1"
        r["texture"] = "5"
    return ds


def test_soft_label_keeps_the_hard_label_as_argmax():
    assert mean_rating("2;1;1;1") == 1.25 and math.isnan(mean_rating("")) and math.isnan(mean_rating("a;b"))
    assert soft_label(3.25) > 0.5 > soft_label(2.75)
    assert soft_label(5.0) == 1.0 and soft_label(1.0) == 0.0 and math.isnan(soft_label(math.nan))


def test_reader_targets_from_manifest_rows(tiny_dataset):
    rt = ReaderTargets.from_rows(_with_ratings(tiny_dataset).rows)
    assert rt.aux.shape == (len(tiny_dataset), 8) and rt.aux_names[0] == "malignancy_mean"
    rt.require_soft(tiny_dataset.labels)
    assert np.isnan(rt.aux[:, 2]).all()  # lobulation missing -> NaN, ignored by the loss
    z = rt.standardized_aux(np.arange(20))
    assert abs(np.nanmean(z[:20, 0])) < 1e-5


def test_soft_labels_refused_when_missing_or_contradicting(tiny_dataset):
    with pytest.raises(ValueError, match="naslung_ratings"):
        ReaderTargets.from_rows(tiny_dataset.rows).require_soft(tiny_dataset.labels)
    rows = _with_ratings(tiny_dataset).rows
    rows[0]["naslung_ratings"] = "5;5;5;5" if rows[0]["label"] == 0 else "1;1;1;1"
    with pytest.raises(ValueError, match="disagrees"):
        ReaderTargets.from_rows(rows).require_soft(tiny_dataset.labels)


def test_losses_use_soft_targets_and_skip_unknown_ratings():
    logits, y = torch.tensor([[0.0, 2.0], [1.0, -1.0]]), torch.tensor([1, 0])
    hard = classification_loss(logits, y)
    assert torch.allclose(classification_loss(logits, y, torch.tensor([float("nan")] * 2), 0.5), hard)
    soft = classification_loss(logits, y, torch.tensor([0.6, 0.4]), 1.0)
    assert soft > hard  # less certain targets cost more on confident logits
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, float("nan")], [float("nan"), 0.0]])
    assert aux_loss(pred, target).item() == pytest.approx(8.0)
    assert aux_loss(pred, torch.full((2, 2), float("nan"))).item() == 0.0


def test_training_with_readers_runs_and_records_lambda(tiny_dataset):
    ds = _with_ratings(tiny_dataset)
    cfg = TrainConfig(epochs=4, batch_size=8, patience=0, device="cpu", soft_labels=0.5, aux_weight=0.3,
                      lambda_floor_at=0.5, augment_options={"rot90_p": 1.0})
    res = train_fold(ds, get_config("tiny"), cfg, 0, progress=False)
    lams = [h["lambda"] for h in res.history]
    assert lams[-1] == cfg.lambda_min and lams[0] > lams[-1]
    assert res.extra["lambda_final"] == cfg.lambda_min and res.extra["asoftmax_m"] == 4
    assert np.isfinite([h["train_loss"] for h in res.history]).all()


def test_training_refuses_reader_targets_without_ratings(tiny_dataset):
    cfg = TrainConfig(epochs=1, batch_size=8, device="cpu", aux_weight=0.3)
    data = DeviceData.from_dataset(tiny_dataset)
    with pytest.raises(ValueError, match="aux targets"):
        train_fold(tiny_dataset, get_config("tiny"), cfg, 0, progress=False, data=data)


@pytest.mark.parametrize("kw", [{"soft_labels": 1.5}, {"aux_weight": -1}, {"lambda_start": 1, "lambda_min": 5},
                                {"lambda_floor_at": 0}])
def test_train_config_refuses_bad_reader_and_lambda_settings(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)


def test_train_config_round_trips_new_fields():
    cfg = TrainConfig(soft_labels=0.5, aux_weight=0.3, aux_targets=("spiculation",), lambda_min=1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
