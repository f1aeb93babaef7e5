"""naslung ensemble / naslung evaluate end to end on the tiny toy dataset (a few seconds of training)."""
import json
import subprocess
import sys

import pytest

from naslung.cli.main import build_parser, main
from naslung.ensemble import load_bundle, read_manifest
from naslung.models.config import ModelConfig

METRIC_KEYS = ["accuracy", "sensitivity", "specificity", "f1", "auc", "n"]


def test_ensemble_models_then_evaluate_json(tmp_path, tiny_dataset_dir, capsys):
    out = tmp_path / "bundle"
    rc = main(["ensemble", "--models", "tiny", "tiny", "tiny", "--data", str(tiny_dataset_dir), "--epochs", "2",
               "--rule", "vote", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ensemble (vote)" in printed and "wrote bundle" in printed
    man = read_manifest(out)
    assert [m["name"] for m in man["members"]] == ["tiny-0", "tiny-1", "tiny-2"]
    assert man["training"]["test_fold"] == 0 and man["training"]["val_fold"] == 1
    assert len({m["sha256"] for m in man["members"]}) == 3  # seeds differ per member
    assert [m["info"]["seed"] for m in man["members"]] == [0, 1, 2]

    assert main(["evaluate", "--bundle", str(out), "--data", str(tiny_dataset_dir), "--json"]) == 0
    stdout = capsys.readouterr().out
    assert len(stdout.strip().splitlines()) == 1
    metrics = json.loads(stdout)
    assert list(metrics) == METRIC_KEYS
    # evaluate defaults to the held-out test fold and reproduces what the builder recorded
    expected = man["training"]["ensemble_test"]
    for k in METRIC_KEYS:
        assert metrics[k] == pytest.approx(expected[k]) if expected[k] is not None else metrics[k] is None

    assert main(["evaluate", "--bundle", str(out), "--data", str(tiny_dataset_dir), "--all", "--fast"]) == 0
    table = capsys.readouterr().out
    assert "all crops (includes training crops!)" in table and "n            48" in table


def test_ensemble_from_search_diverse_weighted(tmp_path, tiny_dataset_dir, capsys):
    run = tmp_path / "search"
    (run / "trials").mkdir(parents=True)
    for seq, stages in enumerate([[[4], [8]], [[4], [4]], [[8], [8]]]):
        cfg = ModelConfig(stages=stages, in_size=16)
        (run / "trials" / f"{seq:05d}_t{seq}.json").write_text(json.dumps(
            {"seq": seq, "trial_id": f"t{seq}", "status": "SUCCEEDED", "model": cfg.to_dict(),
             "val_accuracy": 0.5 + seq / 10, "latency_ms": 1.0}))
    out = tmp_path / "bundle"
    rc = main(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "2", "--select",
               "diverse", "--pool", "3", "--rule", "weighted", "--epochs", "1", "--device", "cpu",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    man = read_manifest(out)
    assert len(man["members"]) == 2 and len(man["training"]["pool"]) == 3
    assert man["training"]["selection"] == "diverse (retrained pool of 3)"
    assert man["rule"]["name"] == "weighted" and sum(man["rule"]["weights"]) == pytest.approx(1.0)
    assert all(m["info"]["search_run"] == str(run) for m in man["members"])
    ens = load_bundle(out)
    assert ens.weights == man["rule"]["weights"]
    # refusing to overwrite, then an even-K vote, both as clean CLI errors
    assert main(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "2", "--epochs", "1",
                 "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "2", "--rule", "vote",
                 "--epochs", "1", "--out", str(tmp_path / "b2")]) == 1
    assert "odd K" in capsys.readouterr().err


def test_evaluate_refuses_tampered_bundle(tmp_path, tiny_dataset_dir, capsys):
    out = tmp_path / "bundle"
    assert main(["ensemble", "--models", "tiny", "--data", str(tiny_dataset_dir), "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    w = next((out / "members").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\1")
    capsys.readouterr()
    assert main(["evaluate", "--bundle", str(out), "--data", str(tiny_dataset_dir), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "checksum mismatch" in captured.err


def test_help_has_examples():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("ensemble", "evaluate"):
        assert f"naslung {name} --" in sub.choices[name].epilog


def test_loading_side_never_imports_training_or_sklearn():
    code = ("import sys, naslung.ensemble as e; e.load_bundle; e.Ensemble; e.FastEnsemble; "
            "bad = [m for m in sys.modules if m.startswith(('naslung.train', 'sklearn', 'SimpleITK', "
            "'search_spaces', 'nni'))]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_diverse_selection_uses_search_validation_predictions(tmp_path, tiny_dataset, tiny_dataset_dir):
    """Records carrying val_ids/val_proba (as search trials write them) are selected before training."""
    import numpy as np

    from naslung.data.folds import split_fold

    val = split_fold(tiny_dataset.folds, 0).val
    ids = [tiny_dataset.ids[i] for i in val]
    y = tiny_dataset.labels[val]
    good_a = np.where(y == 1, 0.9, 0.1)
    good_a[0] = 1 - good_a[0]                 # A errs on crop 0
    good_b = np.where(y == 1, 0.9, 0.1)
    good_b[1] = 1 - good_b[1]                 # B errs on crop 1 instead
    run = tmp_path / "search"
    (run / "trials").mkdir(parents=True)
    for seq, (stages, p) in enumerate([([[4], [8]], good_a), ([[4], [4]], good_a), ([[8], [8]], good_b)]):
        cfg = ModelConfig(stages=stages, in_size=16)
        (run / "trials" / f"{seq:05d}_t{seq}.json").write_text(json.dumps(
            {"seq": seq, "trial_id": f"t{seq}", "status": "SUCCEEDED", "model": cfg.to_dict(),
             "val_accuracy": 0.9 - seq / 100, "latency_ms": 1.0, "val_ids": ids, "val_proba": p.tolist()}))
    out = tmp_path / "bundle"
    assert main(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "2", "--select",
                 "diverse", "--pool", "3", "--epochs", "1", "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    man = read_manifest(out)
    assert [m["info"]["trial_id"] for m in man["members"]] == ["t0", "t2"]  # not the duplicate t1
    assert man["training"]["selection"].startswith("diverse on search validation predictions")
    assert len(man["training"]["pool"]) == 2  # only the chosen members were trained


def test_diverse_selection_never_uses_the_test_fold(tmp_path, tiny_dataset, tiny_dataset_dir, capsys):
    from naslung.data.folds import split_fold

    test = split_fold(tiny_dataset.folds, 0).test  # search predictions on the bundle's test fold
    ids = [tiny_dataset.ids[i] for i in test]
    run = tmp_path / "search"
    (run / "trials").mkdir(parents=True)
    for seq, stages in enumerate([[[4], [8]], [[8], [8]]]):
        cfg = ModelConfig(stages=stages, in_size=16)
        (run / "trials" / f"{seq:05d}_t{seq}.json").write_text(json.dumps(
            {"seq": seq, "trial_id": f"t{seq}", "status": "SUCCEEDED", "model": cfg.to_dict(),
             "val_accuracy": 0.9, "val_ids": ids, "val_proba": [0.5] * len(ids)}))
    out = tmp_path / "bundle"
    assert main(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "1", "--select",
                 "diverse", "--pool", "2", "--epochs", "1", "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    assert "retraining the pool instead" in capsys.readouterr().out
    assert read_manifest(out)["training"]["selection"] == "diverse (retrained pool of 2)"
