"""`naslung demo` end to end on a few embedded crops: every stage directory, a loadable bundle, sane metrics."""
from __future__ import annotations

import json
import math

import pytest

from naslung.cli.main import main


def _check_common(out, capsys_text: str) -> dict:
    from naslung.data.dataset import PreparedDataset
    from naslung.ensemble import load_bundle

    for name in ("dataset.json", "manifest.csv", "crops.npy"):
        assert (out / "data" / name).is_file(), name
    ds = PreparedDataset.load(out / "data")
    assert len(ds) == 100 and set(ds.labels.tolist()) == {0, 1}

    ens = load_bundle(out / "bundle")  # verifies every weight's SHA-256
    assert len(ens) == 2 and ens.spec.size == ds.spec.size

    metrics = json.loads((out / "evaluate.json").read_text())
    assert metrics["n"] == int((ds.folds == 0).sum()) > 0
    for k in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        assert metrics[k] is None or (0.0 <= metrics[k] <= 1.0 and not math.isnan(metrics[k])), k

    ex = out / "explain"
    assert (ex / "overview.png").is_file() and (ex / "viewer.html").is_file()
    assert list((ex / "nifti").glob("*.nii.gz"))
    record = json.loads((ex / "explanation.json").read_text())
    methods = {m["method"] for m in record["maps"]}
    assert {"cbam", "gradcam", "ig"} <= methods and "occlusion" not in methods
    crop_files = list(ex.glob("*.npy"))
    assert len(crop_files) == 1
    crop_id = crop_files[0].stem
    assert ds.labels[list(ds.ids).index(crop_id)] == 1 and ds.folds[list(ds.ids).index(crop_id)] == 0

    summary = json.loads((out / "demo.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["prepare", "search", "ensemble", "evaluate", "explain"]
    assert summary["evaluate"] == metrics
    for stage in ("prepare", "ensemble", "evaluate", "explain"):
        assert stage in capsys_text
    assert f"naslung serve --bundle {out / 'bundle'}" in capsys_text
    assert "not results" in capsys_text
    return summary


def test_demo_no_search(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "100", "--epochs", "1", "--no-search"]) == 0
    text = capsys.readouterr().out
    summary = _check_common(out, text)
    assert not (out / "search").exists()
    assert summary["stages"][1]["out"] == "-"

    # A rerun replaces its own stage directories and gives the same bundle (seeded).
    version = json.loads((out / "bundle" / "manifest.json").read_text())["version"]
    assert main(["demo", "--out", str(out), "--limit", "100", "--epochs", "1", "--no-search"]) == 0
    assert json.loads((out / "bundle" / "manifest.json").read_text())["version"] == version


def test_demo_refuses_foreign_directory(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--limit", "100", "--no-search"]) == 1
    assert "not a demo directory" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_search_config_is_valid_and_capped(tmp_path):
    from naslung.cli.demo import DEMO_SPACE, write_search_config
    from search_spaces.experiment import SearchConfig

    path = tmp_path / "s.yml"
    write_search_config(path, trials=3, epochs=2, seed=7, top_k=2)
    cfg = SearchConfig.from_file(path)
    assert cfg.experiment.max_trials == 3 and cfg.experiment.gpus is None and cfg.top_k == 2
    assert cfg.space["widths"] == DEMO_SPACE["widths"] and cfg.trial["train"]["epochs"] == 2
    assert cfg.strategy.seed == 7 and cfg.trial["device"] == "cpu"


@pytest.mark.timeout(300)
def test_demo_with_search(tmp_path, capsys):
    """A real NNI search (manager + 2 one-epoch trials on 100 crops): about 30 s on 2 cores."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "100", "--epochs", "1", "--search-trials", "2"]) == 0
    text = capsys.readouterr().out
    summary = _check_common(out, text)
    assert (out / "search" / "summary.json").is_file() and (out / "search" / "trials.csv").is_file()
    assert json.loads((out / "search" / "summary.json").read_text())["succeeded"] >= 1
    assert "listens on ALL network interfaces" in text
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert "trial-" in json.dumps(manifest["members"])
    assert summary["stages"][1]["out"] == str(out / "search")
