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


def test_train_cli_takes_a_recipe_a_margin_and_a_box(tmp_path, tiny_dataset_dir, capsys):
    import json

    from naslung.cli.main import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"epochs": 1, "batch_size": 8, "lambda_min": 2.0, "augment_options": {"rot90_p": 1.0}}))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset_dir), "--model", "tiny", "--only-fold", "0", "--margin", "2",
                 "--cbam", "naslung-exact", "--train-config", str(recipe), "--fov-mm", "8,8,4", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["margin"] == 2 and run["model"]["cbam"] == "naslung-exact"
    assert run["train"]["lambda_min"] == 2.0 and run["train"]["augment_options"] == {"rot90_p": 1.0}
    assert run["dataset"]["crop_spec"]["fov_mm"] == [8.0, 8.0, 4.0]
    ckpt = json.loads((out / "fold_0" / "checkpoint.json").read_text())
    assert ckpt["extra"]["lambda_final"] == 2.0 and ckpt["extra"]["asoftmax_m"] == 2
