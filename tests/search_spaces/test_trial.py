"""The trial entry point: one real (tiny) trial in-process, and the parameter routes of nnictl."""
from __future__ import annotations

import json

import pytest

from naslung.models.config import ModelConfig
from search_spaces.space import Arch, SpaceSpec, encode
from search_spaces.trial import TrialSpec, _params_to_trial, nni_metric, run_trial

TRAIN = {"epochs": 1, "batch_size": 16, "patience": 0, "min_epochs": 1, "augment": False, "amp": False}
LAT = {"batch_size": 1, "warmup": 1, "repeats": 2}


def test_run_trial_scores_validation_only_and_writes_its_record(tiny_dataset_dir, tmp_path):
    cfg = ModelConfig(stages=((4,), (4,), (8,)), in_size=16)
    spec = TrialSpec(data=str(tiny_dataset_dir), out=str(tmp_path), train=TRAIN, latency=LAT, device="cpu")
    rec = run_trial(cfg, spec, seq=3, trial_id="abc")
    assert rec["status"] == "SUCCEEDED" and rec["arch"] == cfg.key
    assert 0 <= rec["val_accuracy"] <= 1 and rec["val_n"] > 0
    assert rec["params"] > 0 and rec["flops"] > 0 and rec["latency_ms"] > 0
    assert not any(k.startswith("test") for k in rec)
    assert len(rec["val_proba"]) == len(rec["val_ids"]) == rec["val_n"]
    assert all(0.0 <= p <= 1.0 for p in rec["val_proba"])
    on_disk = json.loads((tmp_path / "trials" / "00003_abc.json").read_text())
    assert on_disk == rec
    m = nni_metric(rec)
    assert m["default"] == rec["val_accuracy"] and m["latency_ms"] == rec["latency_ms"]


def test_nnictl_params_architecture_route():
    space = {"widths": [4, 8, 16], "max_blocks": 5, "in_size": 16}
    arch = Arch(((4,), (8, 8), (16,)))
    params = encode(arch, SpaceSpec.from_dict(space))
    cfg, spec = _params_to_trial(params, {"space": space, "trial": {"data": "d", "train": TRAIN}})
    assert cfg.stages == arch.stages and cfg.in_size == 16 and spec.train == TRAIN
    params["b0_width"] = 16  # decreasing widths: only a foreign tuner would send this
    with pytest.raises(ValueError, match="NasLungTuner"):
        _params_to_trial(params, {"space": space, "trial": {"data": "d"}})


def test_nnictl_params_hpo_route():
    cfg, spec = _params_to_trial({"lr": 0.003, "batch_size": 32, "epochs": 10, "margin": 3},
                                 {"model": "tiny", "trial": {"data": "d", "train": {"epochs": 2}}})
    assert spec.train == {"epochs": 10, "lr": 0.003, "batch_size": 32}
    assert spec.model_overrides == {"margin": 3}
    with pytest.raises(ValueError, match="model:"):
        _params_to_trial({"lr": 0.01}, {"trial": {"data": "d"}})


def test_trial_spec_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown trial fields"):
        TrialSpec.from_dict({"data": "d", "epochs": 3})
    with pytest.raises(ValueError, match="objective"):
        TrialSpec(data="d", objective="f1")


def test_hpo_experiment_is_configured_for_our_trial(tmp_path, tiny_dataset_dir):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    import yaml

    from naslung.models import get_config
    from search_spaces.hpo import build_hpo_experiment, hpo_search_space

    exp = build_hpo_experiment(get_config("tiny"), {"trial": {"threads": 1}}, tiny_dataset_dir, tmp_path / "hpo",
                               tuner="TPE", max_trials=3, concurrency=2)
    c = exp.config
    assert "-m search_spaces.trial --config" in c.trial_command
    assert c.tuner.name == "TPE" and c.max_trial_number == 3 and c.trial_concurrency == 2
    assert set(c.search_space) == {"lr", "batch_size", "epochs", "margin", "lambda_start", "lambda_min",
                                   "soft_labels", "aux_weight"}
    assert hpo_search_space("softmax").keys() == {"lr", "batch_size", "epochs", "soft_labels", "aux_weight"}
    written = yaml.safe_load((tmp_path / "hpo" / "hpo_config.yml").read_text())
    model, spec = _params_to_trial({"lr": 0.002, "batch_size": 16, "epochs": 3, "margin": 2, "lambda_start": 100.0,
                                    "lambda_min": 1.0, "soft_labels": 0.5, "aux_weight": 0.3}, written)
    assert model == get_config("tiny") and spec.model_overrides == {"margin": 2}
    assert (spec.train["lambda_start"], spec.train["lambda_min"]) == (100.0, 1.0)
    assert (spec.train["soft_labels"], spec.train["aux_weight"]) == (0.5, 0.3)
    assert spec.data == str(tiny_dataset_dir.resolve()) and spec.threads == 1
    with pytest.raises(ValueError, match="tuner"):
        build_hpo_experiment(get_config("tiny"), {}, tiny_dataset_dir, tmp_path / "x", tuner="SMAC")


def test_inner_fold_objective_averages_development_folds_and_reports_a_shared_step_schedule(
        tiny_dataset_dir, tmp_path):
    """trial.inner_folds=3: three trainings, one per development fold; the objective is their mean; the
    intermediate results run on one step axis and carry the trial's id; the test fold is never seen."""
    from naslung.data.dataset import PreparedDataset

    ds = PreparedDataset.load(tiny_dataset_dir)
    k = int(ds.folds.max()) + 1
    reports = []
    cfg = ModelConfig(stages=((4,), (4,), (8,)), in_size=16)
    train = {**TRAIN, "epochs": 2}
    spec = TrialSpec(data=str(tiny_dataset_dir), out=str(tmp_path), train=train, latency=LAT, device="cpu",
                     objective="accuracy", inner_folds=3, fold=1)
    rec = run_trial(cfg, spec, seq=5, trial_id="inn", nni_report=reports.append)
    assert rec["val_folds"] == [2 % k, 3 % k, 4 % k] and rec["inner_folds"] == 3
    accs = [f["accuracy"] for f in rec["val_inner"]]
    assert rec["val_accuracy"] == pytest.approx(sum(accs) / 3)
    assert rec["val_n"] == sum(f["n"] for f in rec["val_inner"]) == len(rec["val_ids"]) == len(set(rec["val_ids"]))
    test_ids = {ds.ids[i] for i in range(len(ds)) if ds.folds[i] == 1}
    assert not test_ids & set(rec["val_ids"])
    assert rec["steps_planned"] == 6 and rec["epochs_run"] == 6
    assert [r["step"] for r in reports] == [1, 2, 3, 4, 5, 6]
    assert [r["inner_fold"] for r in reports] == [0, 0, 1, 1, 2, 2]
    assert all(r["trial_id"] == "inn" and r["seq"] == 5 and r["steps"] == 6 for r in reports)
    # the value at a step: the finished folds' final objective and the running fold's current one, averaged
    assert reports[2]["default"] == pytest.approx((accs[0] + reports[2]["val_accuracy"]) / 2)
    assert reports[-1]["default"] == pytest.approx((accs[0] + accs[1] + reports[-1]["val_accuracy"]) / 3)
    with pytest.raises(ValueError, match="inner folds must be between 1 and"):
        run_trial(cfg, TrialSpec(data=str(tiny_dataset_dir), train=train, latency=LAT, device="cpu",
                                 inner_folds=k), seq=6, trial_id="bad")
    with pytest.raises(ValueError, match="inner_folds must be an integer"):
        TrialSpec(data="x", inner_folds=0)


def test_asoftmax_margin_applies_to_asoftmax_nets_only(tiny_dataset_dir, tmp_path):
    spec = TrialSpec(data=str(tiny_dataset_dir), train=TRAIN, latency=LAT, device="cpu", asoftmax_margin=1)
    a = run_trial(ModelConfig(stages=((4,), (4,), (8,)), in_size=16, head="asoftmax"), spec, seq=7, trial_id="m")
    s = run_trial(ModelConfig(stages=((4,), (4,), (8,)), in_size=16, head="amsoftmax"), spec, seq=8, trial_id="n")
    assert a["margin"] == 1 and a["model"]["margin"] == 1
    assert s["margin"] is None  # AM-Softmax keeps its own default margin (1 would be out of its range)
