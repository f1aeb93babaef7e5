"""Early stopping: NNI's Medianstop rule on our trials' intermediate results, the stop command NNI's
manager understands, the stopped trial's record, and a real NNI experiment in which a trial is stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from search_spaces.assessor import AssessorOptions, EarlyStopping, make_assessor
from search_spaces.report import early_stop_savings


def _metric(tid, step, value, steps=6, seconds=2.0):
    return {"trial_id": tid, "seq": int(tid[1:]), "arch": f"arch-{tid}", "default": value, "step": step,
            "steps": steps, "seconds": seconds}


def _run(es, tid, values, steps=6, end=True):
    stopped_at = None
    for i, v in enumerate(values, start=1):
        if es.on_intermediate(_metric(tid, i, v, steps)):
            stopped_at = i
            break
    if end and stopped_at is None:
        es.on_end(tid, True)
    return stopped_at


def test_medianstop_stops_a_trial_below_the_median_of_finished_ones_and_records_what_it_saved():
    stops, kept = [], []
    es = EarlyStopping(make_assessor(AssessorOptions(name="Medianstop", start_step=2), steps=6),
                       stop=stops.append, on_stopped=kept.append)
    assert _run(es, "t0", [0.70, 0.75, 0.80, 0.82, 0.83, 0.85]) is None
    assert _run(es, "t1", [0.72, 0.78, 0.81, 0.84, 0.85, 0.86]) is None   # good: above the median
    assert _run(es, "t2", [0.50, 0.52, 0.55, 0.56, 0.57, 0.58]) == 2     # bad from its first assessable step
    assert stops == ["t2"] and [k.trial_id for k in kept] == ["t2"]
    rec = kept[0].record()
    assert rec["status"] == "EARLY_STOPPED" and rec["stopped_at_step"] == 2 and rec["steps_planned"] == 6
    assert rec["seconds_saved_est"] == pytest.approx(4 * 2.0)            # 4 steps left at 2 s each
    assert rec["objective_history"] == [0.50, 0.52] and rec["arch"] == "arch-t2"
    # results arriving after the stop (in flight) are ignored; a stopped trial is never stopped twice
    assert not es.on_intermediate(_metric("t2", 3, 0.1))
    assert stops == ["t2"]
    assert es.summary() == {"early_stopped": 1, "seconds_saved_est": 8.0}


def test_no_stop_before_start_step_nor_without_finished_trials_nor_at_the_last_step():
    stops = []
    es = EarlyStopping(make_assessor(AssessorOptions(name="Medianstop", start_step=3), steps=4), stop=stops.append)
    assert _run(es, "t0", [0.9, 0.9, 0.9, 0.9], steps=4) is None
    # below the median, but before start_step: kept
    assert not es.on_intermediate(_metric("t1", 1, 0.1, steps=4))
    assert not es.on_intermediate(_metric("t1", 2, 0.1, steps=4))
    assert es.on_intermediate(_metric("t1", 3, 0.1, steps=4))
    fresh = EarlyStopping(make_assessor(AssessorOptions(name="Medianstop", start_step=0), steps=3), stop=stops.append)
    assert _run(fresh, "t5", [0.1, 0.1, 0.1], steps=3) is None           # nothing finished to compare with
    # a result without a trial id cannot be acted on
    assert not fresh.on_intermediate({"default": 0.0})


def test_a_failing_stop_leaves_the_trial_running_and_unrecorded():
    def refuse(tid):
        raise RuntimeError("manager gone")

    kept = []
    es = EarlyStopping(make_assessor(AssessorOptions(name="Medianstop", start_step=1), steps=3), stop=refuse,
                       on_stopped=kept.append)
    _run(es, "t0", [0.9, 0.9, 0.9], steps=3)
    assert not es.on_intermediate(_metric("t1", 1, 0.1, steps=3))
    assert kept == []


def test_curvefitting_is_available_and_options_are_checked():
    from nni.algorithms.hpo.curvefitting_assessor import CurvefittingAssessor

    a = make_assessor(AssessorOptions(name="Curvefitting", start_step=4, threshold=0.9), steps=30)
    assert isinstance(a, CurvefittingAssessor)
    with pytest.raises(ValueError, match="Medianstop"):
        AssessorOptions(name="median")
    with pytest.raises(ValueError, match="gap"):
        AssessorOptions(name="Medianstop", gap=0)


def test_search_config_reads_the_assessor_section():
    from search_spaces.experiment import SearchConfig

    cfg = SearchConfig.from_dict({"assessor": {"name": "Medianstop", "start_step": 8}})
    assert cfg.assessor.enabled and cfg.assessor.start_step == 8
    assert not SearchConfig.from_dict({}).assessor.enabled
    with pytest.raises(ValueError, match="unknown fields in `assessor:`"):
        SearchConfig.from_dict({"assessor": {"name": "Medianstop", "patience": 3}})


def test_stop_command_is_nnis_kill_trial_job_on_the_tuner_channel():
    from nni.common.serializer import load
    from nni.runtime.tuner_command_channel.command_type import CommandType

    from search_spaces.nni_api import early_stop_trial

    sent = []

    class Channel:
        def _send(self, command_type, data):
            sent.append((command_type, data))

    class Engine:
        _channel = Channel()

    early_stop_trial(Engine(), "Ab3xY")
    assert sent[0][0] == CommandType.KillTrialJob and load(sent[0][1]) == "Ab3xY"
    with pytest.raises(RuntimeError, match="no tuner command channel"):
        early_stop_trial(object(), "Ab3xY")


def test_savings_are_set_against_the_time_spent():
    recs = [{"status": "SUCCEEDED", "train_seconds": 60.0},
            {"status": "EARLY_STOPPED", "train_seconds": 20.0, "seconds_saved_est": 40.0},
            {"status": "FAILED"}]
    s = early_stop_savings(recs)
    assert s["train_seconds_spent"] == 80.0 and s["early_stop_seconds_saved_est"] == 40.0
    assert s["early_stop_saved_fraction_est"] == pytest.approx(40 / 120, abs=1e-4)


# ------------------------------------------------------------------ a real NNI experiment
DRIVER = textwrap.dedent('''
    """naslung search with an assessor that stops every trial at step 2 once one trial has finished:
    the rule is a test double, the stop goes through NNI's manager for real."""
    import sys
    from nni.assessor import Assessor, AssessResult
    import search_spaces.experiment as experiment

    class StopAfterFirst(Assessor):
        def __init__(self):
            self.finished = 0
        def assess_trial(self, trial_job_id, trial_history):
            return AssessResult.Bad if self.finished and len(trial_history) >= 2 else AssessResult.Good
        def trial_end(self, trial_job_id, success):
            self.finished += int(success)

    experiment.make_assessor = lambda opts, steps: StopAfterFirst()
    from naslung.cli.main import main
    sys.exit(main(sys.argv[1:]))
''')


@pytest.mark.timeout(240)
def test_a_real_search_stops_a_trial_through_nnis_manager(tmp_path, tiny_dataset_dir):
    from tests.search_spaces.test_search_e2e import _env, _kill_leftovers

    cfg = {
        "space": {"widths": [4, 8], "min_blocks": 3, "max_blocks": 3, "heads": ["asoftmax"], "cbam": ["naslung"]},
        "strategy": {"name": "pop", "seed": 0, "candidate_latency": "bound"},
        "trial": {"device": "cpu", "threads": 1, "objective": "accuracy", "inner_folds": 2,
                  "train": {"epochs": 2, "batch_size": 16, "patience": 0, "min_epochs": 1, "augment": False,
                            "amp": False},
                  "latency": {"batch_size": 1, "warmup": 1, "repeats": 3}},
        "experiment": {"max_trials": 3, "trial_concurrency": 1, "port": 0},
        "assessor": {"name": "Medianstop", "start_step": 1},
        "top_k": 1,
    }
    (tmp_path / "search.yml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "run"
    cmd = [sys.executable, str(tmp_path / "driver.py"), "search", "--data", str(tiny_dataset_dir), "--config",
           str(tmp_path / "search.yml"), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"search did not finish:\n{stdout[-3000:]}")
    finally:
        time.sleep(0.5)
        _kill_leftovers(str(out))
    assert proc.returncode == 0, stdout[-3000:]
    assert "early stopping Medianstop from step 1" in stdout
    recs = sorted((json.loads(p.read_text()) for p in (out / "trials").glob("*.json")), key=lambda r: r["seq"])
    assert [r["status"] for r in recs] == ["SUCCEEDED", "EARLY_STOPPED", "EARLY_STOPPED"], stdout[-3000:]
    assert recs[0]["steps_planned"] == 4 and recs[0]["epochs_run"] == 4
    for r in recs[1:]:
        assert r["stopped_at_step"] == 2 and r["steps_planned"] == 4 and r["seconds_saved_est"] > 0
    assert "EARLY_STOPPED" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == 1 and summary["early_stopped"] == 2 and summary["failed"] == 0
    assert summary["early_stop_seconds_saved_est"] > 0 and summary["assessor"] == "Medianstop"
    # partial-order pruning heard the finished trial's result before it proposed the next one (NNI
    # drops the events of models a strategy does not hold on to: it used to search blind)
    assert summary["strategy_results_seen"] == 1
    # NNI's own bookkeeping: the manager took the stop as the assessor command (KillTrialJob from the
    # tuner channel, logged "cancelTrialJob"), not as a user's cancel through the REST API
    stopped_id = recs[1]["trial_id"]  # (the other stopped trial ends the same way)
    logs = "".join(p.read_text() for p in (out / "nni-experiments").glob("*/log/nnimanager.log"))
    assert f'(NNIManager) cancelTrialJob: "{stopped_id}"' in logs and "User cancelTrialJob" not in logs
    db = list((out / "nni-experiments").glob("*/db/nni.sqlite"))
    assert db, "no NNI database"
    import sqlite3

    with sqlite3.connect(db[0]) as con:
        events = {row[0] for row in con.execute("select event from TrialJobEvent where trialJobId = ?",
                                                (stopped_id,))}
    # NNI 3.0's local training service sets its early-stop flag only after the trial has ended, so its
    # own status reads USER_CANCELED (docs/search.md); EARLY_STOPPED would be the right word
    assert events & {"EARLY_STOPPED", "USER_CANCELED"}, events


def test_trials_that_end_before_start_step_are_assessed_still_become_references():
    """Medianstop records a curve only while assessing; a trial that finished without ever being
    assessed (all its results came before start_step... or arrived at its last step) must still count."""
    stops = []
    es = EarlyStopping(make_assessor(AssessorOptions(name="Medianstop", start_step=3), steps=3), stop=stops.append)
    assert _run(es, "t0", [0.9, 0.9, 0.9], steps=3) is None   # never assessed: last step is skipped
    assert es.on_intermediate(_metric("t1", 1, 0.1, steps=4)) is False
    assert es.on_intermediate(_metric("t1", 2, 0.1, steps=4)) is False
    assert es.on_intermediate(_metric("t1", 3, 0.1, steps=4)) is True  # compared with t0's curve
