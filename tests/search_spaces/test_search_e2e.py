"""A real 2-trial NNI experiment, end to end on CPU (NNI manager, local training service, trials as
processes), through `naslung search`; catches NNI drift. Runs in a subprocess with its own HOME
(NNI's experiment registry), a free port and a hard timeout; every process it leaves is killed."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from naslung.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 150


def _config(tmp_path: Path) -> Path:
    cfg = {
        "space": {"widths": [4, 8], "min_blocks": 3, "max_blocks": 3, "heads": ["asoftmax"], "cbam": ["naslung"]},
        "strategy": {"name": "pop", "seed": 0, "candidate_latency": "bound"},
        "trial": {"device": "cpu", "threads": 1, "objective": "accuracy",
                  "train": {"epochs": 1, "batch_size": 16, "patience": 0, "min_epochs": 1, "augment": False,
                            "amp": False},
                  "latency": {"batch_size": 1, "warmup": 1, "repeats": 3}},
        "experiment": {"max_trials": 2, "trial_concurrency": 2, "port": 0},
        "top_k": 2,
    }
    path = tmp_path / "search.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _kill_leftovers(marker: str) -> None:
    """Kill processes this test started (NNI's manager runs in its own process group)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                for child in p.children(recursive=True):
                    child.kill()
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # matplotlib's font cache stays where it is (rebuilding it under a new HOME costs seconds)
    env.setdefault("MPLCONFIGDIR", str(Path.home() / ".cache" / "matplotlib"))
    env["HOME"] = str(tmp_path / "home")        # NNI keeps its experiment registry under ~/nni-experiments
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.timeout(TIMEOUT + 30)
def test_two_trial_search_end_to_end(tmp_path, tiny_dataset_dir):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    data, config, out = tiny_dataset_dir, _config(tmp_path), tmp_path / "run"
    cmd = [sys.executable, "-m", "naslung", "search", "--data", str(data), "--config", str(config),
           "--out", str(out)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"search did not finish in {TIMEOUT}s:\n{stdout[-3000:]}")
    finally:
        _kill_leftovers(str(tmp_path))
    wall = time.time() - t0
    assert proc.returncode == 0, stdout[-4000:]
    assert "web UI http://localhost:" in stdout
    assert "ALL network interfaces" in stdout

    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2
    assert len({t["arch"] for t in trials}) == 2
    for t in trials:
        assert t["status"] == "SUCCEEDED"
        assert 0.0 <= float(t["val_accuracy"]) <= 1.0
        assert float(t["latency_ms"]) > 0 and int(t["params"]) > 0 and int(t["flops"]) > 0
    records = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    assert all(not any(k.startswith("test") for k in r) for r in records)  # the test fold is never scored

    with open(out / "pareto.csv") as f:
        pareto = list(csv.DictReader(f))
    assert 1 <= len(pareto) <= 2
    assert {p["arch"] for p in pareto} <= {t["arch"] for t in trials}
    assert (out / "pareto.png").stat().st_size > 1000
    top = ModelConfig.from_file(out / "top" / "1.json")
    assert top.key in {t["arch"] for t in trials}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["succeeded"] == 2
    print(f"\n2-trial NNI search on CPU: {wall:.1f}s wall, {summary['trials_per_hour']} trials/hour "
          f"(search only, {summary['wall_seconds']}s)")


def test_port_in_use_is_a_clear_error(tmp_path, tiny_dataset_dir, capsys):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    from naslung.cli.main import main

    data, config = tiny_dataset_dir, _config(tmp_path)
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc = main(["search", "--data", str(data), "--config", str(config), "--out", str(tmp_path / "run"),
                   "--port", str(port)])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"port {port} is already in use" in err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    from naslung.cli.main import main

    rc = main(["search", "--data", str(tmp_path / "nope"), "--config", str(_config(tmp_path)),
               "--out", str(tmp_path / "run"), "--port", "0"])
    assert rc == 1
    assert "not a prepared dataset" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 30)
def test_dead_nni_manager_is_a_clear_error_and_the_report_is_kept(tmp_path, tiny_dataset_dir):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    import psutil

    cfg = yaml.safe_load(_config(tmp_path).read_text())
    cfg["space"]["max_blocks"] = 4
    cfg["trial"]["train"]["epochs"] = 8
    cfg["experiment"].update(max_trials=6, trial_concurrency=1)
    config = tmp_path / "long.yml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "naslung", "search", "--data", str(tiny_dataset_dir), "--config", str(config),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        while not list((out / "trials").glob("*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        managers = [p for p in psutil.process_iter(["cmdline"])
                    if "nni_node" in " ".join(p.info["cmdline"] or []) and str(out) in " ".join(p.info["cmdline"] or [])]
        assert managers, "NNI manager process not found"
        for m in managers:
            m.kill()
        stdout, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_leftovers(str(tmp_path))
    assert proc.returncode == 1
    assert "NNI manager on port" in stdout and "stopped answering" in stdout and "nnimanager.log" in stdout
    assert (out / "trials.csv").is_file() and (out / "pareto.csv").is_file()
