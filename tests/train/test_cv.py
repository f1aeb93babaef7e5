import csv
import json

import numpy as np
import torch

from naslung.models import get_config
from naslung.train import TrainConfig, cross_validate
from naslung.train.checkpoint import load_checkpoint
from naslung.train.trainer import predict_proba
from naslung.train.data import DeviceData


def test_one_epoch_cv_writes_a_complete_run(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    res = cross_validate(tiny_dataset, get_config("tiny"), TrainConfig(epochs=1, batch_size=8), out=out,
                         progress=False)
    k = 4
    assert len(res.folds) == k
    # every crop is predicted exactly once, by the fold that held it out
    with open(out / "folds.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == sorted(tiny_dataset.ids)
    fold_of = dict(zip(tiny_dataset.ids, tiny_dataset.folds.tolist()))
    assert all(int(r["fold"]) == fold_of[r["id"]] for r in rows)
    m = json.loads((out / "cv_metrics.json").read_text())
    assert len(m["per_fold"]) == k and set(m["mean"]) >= {"accuracy", "sensitivity", "specificity", "f1", "auc"}
    accs = [f["test"]["accuracy"] for f in m["per_fold"]]
    assert abs(m["mean"]["accuracy"] - np.mean(accs)) < 1e-9
    cm = res.confusion
    assert sum(map(sum, cm)) == len(tiny_dataset) == m["pooled"]["n"]
    assert (out / "confusion_matrix.csv").read_text().startswith("true\\pred")
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"]["fingerprint"] == tiny_dataset.fingerprint()
    # the fold checkpoint reproduces that fold's test predictions
    ck = load_checkpoint(out / "fold_2")
    assert ck.extra["fold"] == 2 and set(ck.extra["split_ids"]["test"]) == {
        i for i, f in fold_of.items() if f == 2}
    data = DeviceData.from_dataset(tiny_dataset)
    test_idx = torch.as_tensor(res.folds[2].test_idx)
    p = predict_proba(ck.build_model(), data.x[test_idx]).numpy()
    assert np.allclose(p, res.folds[2].test_proba, atol=1e-5)
    assert (out / "fold_2" / "history.csv").is_file()


def test_cv_subset_of_folds(tiny_dataset):
    res = cross_validate(tiny_dataset, get_config("tiny"), TrainConfig(epochs=1, batch_size=8), folds=[3],
                         progress=False)
    assert [f.fold for f in res.folds] == [3]
    assert res.metrics["pooled"]["n"] == int((tiny_dataset.folds == 3).sum())
