import json

from naslung.cli.main import main


def test_train_cli_runs_and_prints_table(tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_dataset_dir), "--model", "tiny", "--folds", "3", "--epochs", "1",
               "--batch-size", "8", "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "assigned 3 patient-grouped folds" in text and "pooled" in text and "mean" in text
    m = json.loads((out / "cv_metrics.json").read_text())
    assert m["n_folds"] == 3 and len(m["per_fold"]) == 3


def test_train_cli_reports_bad_input(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path), "--model", "tiny", "--out", str(tmp_path / "r")])
    assert rc == 1
    assert "not a prepared dataset" in capsys.readouterr().err


def test_profile_cli(tmp_path, capsys):
    rc = main(["profile", "--model", "tiny", "--repeats", "2", "--warmup", "1", "--json", str(tmp_path / "p.json")])
    assert rc == 0
    assert "tiny" in capsys.readouterr().out
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["params"] > 0 and rows[0]["flops"] > 0
