import dataclasses

import numpy as np
import pytest
import torch

from naslung.data.folds import split_fold
from naslung.models import get_config
from naslung.train import DeviceData, TrainConfig, train_fold
from naslung.train.trainer import epoch_batches

TINY = get_config("tiny")


def test_device_data_is_normalised_once(tiny_dataset):
    data = DeviceData.from_dataset(tiny_dataset)
    assert data.x.shape == (len(tiny_dataset), 1, 16, 16, 16) and data.x.dtype == torch.float32
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1
    expected = tiny_dataset.spec.normalize(tiny_dataset.crops[:2])
    assert np.allclose(data.x[:2, 0].numpy(), expected)


def test_class_balanced_batches_are_balanced():
    labels = torch.tensor([0] * 90 + [1] * 10)
    idx = torch.arange(100)
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat(epoch_batches(idx, labels, 50, g, class_balanced=True))
    frac = labels[drawn].float().mean().item()
    assert 0.35 < frac < 0.65
    plain = torch.cat(epoch_batches(idx, labels, 50, g, class_balanced=False))
    assert sorted(plain.tolist()) == list(range(100))


def test_last_batch_of_one_is_dropped():
    batches = epoch_batches(torch.arange(9), torch.zeros(9, dtype=torch.long), 4, torch.Generator(), False)
    assert [len(b) for b in batches] == [4, 4]


def test_fold_learns_the_toy_task(tiny_dataset):
    cfg = TrainConfig(epochs=25, batch_size=8, lr=3e-3, patience=0, seed=0)
    res = train_fold(tiny_dataset, TINY, cfg, 0, progress=False)
    split = split_fold(tiny_dataset.folds, 0)
    assert np.array_equal(res.test_idx, split.test) and np.array_equal(res.val_idx, split.val)
    assert res.val_proba.shape == (len(split.val), 2) and res.test_proba.shape == (len(split.test), 2)
    assert len(res.history) == 25
    assert res.val_metrics["auc"] >= 0.9
    assert res.test_metrics["accuracy"] >= 0.75
    assert res.history[-1]["lambda"] < res.history[0]["lambda"]  # A-Softmax lambda annealed


def test_test_fold_labels_never_influence_training(tiny_dataset):
    """Flip every test-fold label: the chosen epoch, weights and validation results must not move."""
    cfg = TrainConfig(epochs=4, batch_size=8, lr=3e-3, seed=1)
    a = train_fold(tiny_dataset, TINY, cfg, 1, progress=False)
    flipped = tiny_dataset.subset(range(len(tiny_dataset)))
    for i in split_fold(tiny_dataset.folds, 1).test:
        flipped.rows[i]["label"] = 1 - flipped.rows[i]["label"]
    b = train_fold(flipped, TINY, cfg, 1, progress=False)
    assert a.best_epoch == b.best_epoch
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert np.allclose(a.val_proba, b.val_proba)
    assert a.test_metrics["accuracy"] == pytest.approx(1 - b.test_metrics["accuracy"])


def test_seeded_runs_repeat_and_heads_all_train(tiny_dataset):
    cfg = TrainConfig(epochs=2, batch_size=8, class_balanced=True, optimizer="adam", schedule="step", step_size=1)
    for head in ("softmax", "amsoftmax"):
        mc = dataclasses.replace(TINY, head=head)
        r1 = train_fold(tiny_dataset, mc, cfg, 2, progress=False)
        r2 = train_fold(tiny_dataset, mc, cfg, 2, progress=False)
        assert np.allclose(r1.test_proba, r2.test_proba)
        assert np.isfinite(r1.history[-1]["train_loss"])
    assert r1.history[1]["lr"] == pytest.approx(cfg.lr * cfg.gamma)


def test_eval_test_false_and_config_errors(tiny_dataset):
    res = train_fold(tiny_dataset, TINY, TrainConfig(epochs=1, batch_size=8), 0, eval_test=False, progress=False)
    assert res.test_metrics is None and res.test_proba is None
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    assert TrainConfig.from_dict(TrainConfig(lr=0.5).to_dict()).lr == 0.5
