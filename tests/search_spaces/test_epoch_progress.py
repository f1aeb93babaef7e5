"""Per-epoch progress: a running trial reports every epoch (stdout, RUN/progress, NNI intermediate result)
and `naslung search` prints a line per epoch and when a trial starts; NNI's own lines come out plain."""
from __future__ import annotations

import json
import logging

from naslung.models.config import ModelConfig
from search_spaces.trial import TrialSpec, run_trial

TRAIN = {"epochs": 3, "batch_size": 16, "patience": 0, "min_epochs": 1, "augment": False, "amp": False}
LAT = {"batch_size": 1, "warmup": 1, "repeats": 2}


def test_trial_reports_every_epoch(tiny_dataset_dir, tmp_path, capsys, caplog):
    reports = []
    cfg = ModelConfig(stages=((4,), (4,), (8,)), in_size=16)
    spec = TrialSpec(data=str(tiny_dataset_dir), out=str(tmp_path), train=TRAIN, latency=LAT, device="cpu",
                     objective="auc")
    caplog.set_level(logging.INFO)
    rec = run_trial(cfg, spec, seq=2, trial_id="xyz", nni_report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    for r in reports:
        assert set(r) >= {"default", "val_accuracy", "val_auc", "train_loss"}
        assert isinstance(r["default"], float) and r["default"] == (r["val_auc"] if r["val_auc"] is not None else 0.0)
    progress = json.loads((tmp_path / "progress" / "00002_xyz.json").read_text())
    assert progress["arch"] == cfg.key and progress["epochs"] == 3
    assert [h["epoch"] for h in progress["history"]] == [1, 2, 3]
    out = capsys.readouterr().out
    assert f"{cfg.key}  epoch 1/3  train loss" in out and "epoch 3/3" in out
    # the tap forwards records but lets no DEBUG line through, and is removed afterwards
    assert not any(r.levelno < logging.INFO and r.name == "naslung.train.trainer" for r in caplog.records)
    assert not logging.getLogger("naslung.train.trainer").filters
    assert rec["epochs_run"] == 3


def test_search_progress_prints_start_and_each_epoch_once(tmp_path):
    from search_spaces.experiment import _Progress
    from search_spaces.report import write_json_atomic

    lines = []
    prog = _Progress(tmp_path, 2, lines.append)
    state = {"seq": 0, "trial_id": "a", "arch": "4_4_8|softmax|original", "epochs": 2, "history": []}
    write_json_atomic(tmp_path / "progress" / "00000_a.json", state)
    prog.poll()
    assert lines == ["      trial 0 4_4_8|softmax|original: training 2 epoch(s)"]
    state["history"].append({"epoch": 1, "train_loss": 0.7, "val_acc": 0.6, "val_auc": None, "seconds": 3.2})
    write_json_atomic(tmp_path / "progress" / "00000_a.json", state)
    prog.poll()
    prog.poll()
    assert len(lines) == 2 and "epoch 1/2  train loss 0.700  val acc 0.600 auc -  (3.2 s)" in lines[1]


def test_nni_terminal_lines_are_plain_and_give_no_bad_advice():
    from search_spaces.nni_api import require_nni

    require_nni(("nni.experiment",))
    from nni.runtime import log as nni_log

    handler = nni_log._handlers["_stdout_"]

    def show(msg, level=logging.INFO):
        rec = logging.LogRecord("nni.experiment", level, __file__, 1, msg, (), None)
        return handler.format(rec) if handler.filter(rec) else None

    line = show("Creating experiment, Experiment ID: ${CYAN}abc123")
    assert line.endswith("nni: Creating experiment, Experiment ID: abc123") and "\x1b" not in line
    assert show("Search process is done. You can put an `time.sleep(FOREVER)` here to block the process") is None
    stop = show('To stop experiment run "nnictl stop abc123" or "nnictl stop --all"', logging.WARNING)
    assert "--all" not in stop and 'nnictl stop abc123' in stop and "WARNING" in stop
