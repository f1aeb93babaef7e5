"""A real 2-trial search through NNI's remote (SSH) training service: `naslung search --platform remote`.

An OpenSSH server on 127.0.0.1 (free port, throwaway keys in a temporary directory, see
tests/search_spaces/sshd.py) is the worker; NNI's manager logs into it over SSH, uploads the trial
code over SFTP, starts its trial keeper there and runs the trials with the hosts.yml python. Marked
``remote`` and left out of ``make test``: run ``make test-remote``. Without sshd the test is skipped
with the install command, except under ``make test-remote`` (NASLUNG_REQUIRE_SSHD=1), where that is a
failure: a target that exists to test this must not pass by skipping.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sshd import INSTALL_HINT, missing_tools, start_sshd
from test_search_e2e import _config, _env, _kill_leftovers

pytestmark = pytest.mark.remote
TIMEOUT = 300
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sshd(tmp_path):
    missing = missing_tools()
    if missing:
        msg = f"OpenSSH not installed ({', '.join(missing)} missing); install it with: {INSTALL_HINT}"
        if os.environ.get("NASLUNG_REQUIRE_SSHD"):
            pytest.fail(msg)
        pytest.skip(msg)
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()
    assert server.proc.poll() is not None, "sshd still running after stop()"


def test_sshd_fixture_logs_in_with_the_throwaway_key_only(sshd):
    res = sshd.ssh(f"{sys.executable} -c 'import os; print(os.environ[\"HOME\"])'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(sshd.home)  # sessions live in the temporary directory
    stranger = sshd.root / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    denied = subprocess.run(["ssh", "-i", str(stranger), "-p", str(sshd.port), "-o", "BatchMode=yes",
                             "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}",
                             f"{sshd.user}@127.0.0.1", "true"], capture_output=True, text=True, timeout=30)
    assert denied.returncode == 255 and "Permission denied" in denied.stderr


@pytest.mark.timeout(TIMEOUT + 60)
def test_two_trial_search_on_an_ssh_host(sshd, tmp_path, tiny_dataset_dir):
    import nni  # noqa: F401  (pinned: a broken install must fail, not skip)

    hosts = tmp_path / "hosts.yml"
    hosts.write_text(yaml.safe_dump({"hosts": [{
        "host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key_file": str(sshd.client_key),
        "python": sys.executable}]}))  # this venv's python: absolute, with naslung and nni installed
    config, out = _config(tmp_path), tmp_path / "run"
    cmd = [sys.executable, "-m", "naslung", "search", "--data", str(tiny_dataset_dir), "--config", str(config),
           "--out", str(out), "--platform", "remote", "--hosts", str(hosts), "--manager-ip", "127.0.0.1"]
    env = _env(tmp_path)
    env["HOME"] = str(sshd.home)  # the preflight's known_hosts: the one the fixture already filled
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"remote search did not finish in {TIMEOUT}s:\n{stdout[-4000:]}\n{_manager_log(out)}")
    finally:
        _kill_leftovers(str(tmp_path))
    wall = time.time() - t0
    assert proc.returncode == 0, stdout[-4000:] + _manager_log(out)
    assert f"host {sshd.user}@127.0.0.1:{sshd.port}: python" in stdout and "ready" in stdout  # the preflight
    assert f"remote hosts {sshd.user}@127.0.0.1:{sshd.port}" in stdout

    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and len({t["arch"] for t in trials}) == 2
    for t in trials:
        assert t["status"] == "SUCCEEDED", t
        assert 0.0 <= float(t["val_accuracy"]) <= 1.0 and float(t["latency_ms"]) > 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["trials"] == 2 and summary["succeeded"] == 2

    # NNI really went through SSH: the server accepted our key, and NNI's worker lived in the session HOME.
    log = sshd.log.read_text(encoding="utf-8")
    assert "Accepted publickey for" in log, log[-2000:]
    exp_id = summary["experiment_id"]
    worker_dirs = list((sshd.home / "nni-experiments" / exp_id / "environments").glob("*-worker*"))
    assert worker_dirs, f"no NNI worker directory under {sshd.home}"
    manager = (out / "nni-experiments" / exp_id / "log" / "nnimanager.log").read_text(encoding="utf-8")
    assert "RemoteV3" in manager
    # the code directory NNI uploaded is the small one, not the directory the search was started in
    assert (out / "nni-experiments" / "code").is_dir()
    print(f"\n2-trial NNI search through SSH on 127.0.0.1:{sshd.port}: {wall:.1f}s wall, "
          f"{summary['trials_per_hour']} trials/hour (search only, {summary['wall_seconds']}s)")


@pytest.mark.timeout(TIMEOUT + 60)
def test_two_trials_through_nnictl_on_an_ssh_host(sshd, tmp_path, tiny_dataset_dir):
    """The nnictl route: examples/search_remote.yml with its host, paths and budget pointed at this test."""
    import nni  # noqa: F401

    from search_spaces.nni_api import free_port

    cfg = yaml.safe_load((ROOT / "examples" / "search_remote.yml").read_text(encoding="utf-8"))
    code, out = tmp_path / "code", tmp_path / "run"
    code.mkdir()
    (code / "search.yml").write_text(_config(tmp_path).read_text(encoding="utf-8"))  # travels to the host with the code
    cfg.update(trialCommand=f"python -m search_spaces.trial --config search.yml --data {tiny_dataset_dir} "
                            f"--out {out}",
               trialCodeDirectory=str(code), experimentWorkingDirectory=str(out / "nni-experiments"),
               trialConcurrency=1, maxTrialNumber=2, nniManagerIp="127.0.0.1")
    cfg["tuner"].update(codeDirectory=str(ROOT), classArgs={"config": str(code / "search.yml")})
    cfg["trainingService"]["machineList"] = [{
        "host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "sshKeyFile": str(sshd.client_key),
        "pythonPath": str(Path(sys.executable).parent)}]
    config = tmp_path / "nni_remote.yml"
    config.write_text(yaml.safe_dump(cfg))
    env = _env(tmp_path)
    env["HOME"] = str(sshd.home)  # nnictl's experiment registry stays in the temporary directory
    port = str(free_port())
    nnictl = [sys.executable, "-m", "search_spaces.nnictl"]
    t0 = time.time()
    create = subprocess.run([*nnictl, "create", "--config", str(config), "--port", port], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    exp_id = None
    try:
        assert create.returncode == 0, create.stdout[-3000:] + create.stderr[-3000:]
        exp_id = re.search(r"Experiment ID: (\w+)", create.stdout + create.stderr).group(1)
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and len(list((out / "trials").glob("*.json"))) < 2:
            time.sleep(2)
        wall = time.time() - t0
    finally:
        if exp_id:
            subprocess.run([*nnictl, "stop", exp_id], env=env, cwd=tmp_path, capture_output=True, timeout=120)
        _kill_leftovers(str(tmp_path))
    records = [json.loads(p.read_text(encoding="utf-8")) for p in (out / "trials").glob("*.json")]
    assert len(records) == 2, _manager_log(out)
    assert all(r["status"] == "SUCCEEDED" for r in records), [r.get("error") for r in records]
    report = subprocess.run([sys.executable, "-m", "naslung", "search", "--report-only", "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "2 trials (2 succeeded, 0 failed)" in report.stdout, report.stdout + report.stderr
    assert "RemoteV3" in (out / "nni-experiments" / exp_id / "log" / "nnimanager.log").read_text(encoding="utf-8")
    print(f"\n2-trial nnictl experiment through SSH: {wall:.1f}s from create to the second record")


def test_preflight_names_the_missing_dataset_before_nni_starts(sshd, tmp_path):
    from search_spaces.training_services import PreflightError, parse_hosts, preflight

    hosts = parse_hosts({"hosts": [{"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                                    "key_file": str(sshd.client_key), "python": sys.executable}]})
    with pytest.raises(PreflightError, match="dataset .* is not there"):
        preflight(hosts, tmp_path / "no-data", tmp_path / "run", known_hosts=str(sshd.known_hosts))
    bad_python = parse_hosts({"hosts": [{"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                                         "key_file": str(sshd.client_key), "python": "/nonexistent/bin/python"}]})
    with pytest.raises(PreflightError, match="python /nonexistent/bin/python not found"):
        preflight(bad_python, tmp_path, tmp_path / "run", known_hosts=str(sshd.known_hosts))


def _manager_log(out: Path) -> str:
    logs = sorted(out.glob("nni-experiments/*/log/nnimanager.log"))
    return ("\n--- nnimanager.log (tail) ---\n" + logs[-1].read_text(encoding="utf-8")[-4000:]) if logs else ""
