import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "real_data_cv.py"


def test_real_data_script_runs_cnn_and_baseline_on_same_folds(tiny_dataset_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rd"
    monkeypatch.setattr(sys, "argv", ["real_data_cv.py", "--data", str(tiny_dataset_dir), "--model", "tiny",
                                      "--folds", "4", "--epochs", "1", "--batch-size", "8", "--no-progress",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert e.value.code == 0
    res = json.loads((out / "real_data_cv.json").read_text())
    assert res["folds"] == 4 and len(res["cnn"]["per_fold"]) == 4
    base = res["baselines"][0]
    assert base["name"] == "logreg(diameter_mm)" and len(base["per_fold"]) == 4
    # toy diameters separate the classes perfectly, so the baseline must find it
    assert base["pooled"]["auc"] == pytest.approx(1.0)
    assert sum(f["n"] for f in base["per_fold"]) == res["cnn"]["pooled"]["n"]
    assert "logreg(diameter_mm)" in capsys.readouterr().out
