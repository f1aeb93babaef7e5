"""`naslung search --report-only` says so when no trial has finished, instead of an empty report and exit 0."""
from __future__ import annotations

import json

from naslung.cli.main import main
from search_spaces.report import write_json_atomic
from test_report import _record


def test_report_only_on_a_run_without_finished_trials(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["search", "--report-only", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert "no trial has finished" in err and "nothing to report" in err
    assert not (run / "trials.csv").exists() and not (run / "summary.json").exists()
    # a trial that is still training is mentioned
    write_json_atomic(run / "progress" / "00000_abc.json", {"seq": 0, "history": []})
    assert main(["search", "--report-only", "--out", str(run)]) == 1
    assert "1 trial(s) started training there" in capsys.readouterr().err
    assert main(["search", "--report-only", "--out", str(tmp_path / "nope")]) == 1
    assert "no such search run directory" in capsys.readouterr().err


def test_report_only_with_failed_trials_only_exits_1_and_with_one_success_0(tmp_path, capsys):
    run = tmp_path / "run"
    failed = _record(0, ((4,), (4,), (4,)), None, None, status="FAILED")
    write_json_atomic(run / "trials" / "00000_t0.json", failed)
    assert main(["search", "--report-only", "--out", str(run)]) == 1
    cap = capsys.readouterr()
    assert "1 trials (0 succeeded, 1 failed)" in cap.out and "no trial" in cap.err and "succeeded" in cap.err
    assert (run / "trials.csv").is_file()
    write_json_atomic(run / "trials" / "00001_t1.json", _record(1, ((4,), (8,), (8,)), 0.7, 1.0))
    write_json_atomic(run / "search_config.json", {"trial": {"objective": "auc"}, "top_k": 1})
    assert main(["search", "--report-only", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["succeeded"] == 1 and summary["objective"] == "val_auc" and summary["top"] == 1
