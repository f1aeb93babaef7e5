"""hosts.yml validation, the remote training-service config NNI receives, and the CLI's platform flags."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from search_spaces.training_services import (HostsError, configure_training_service, load_hosts, parse_hosts,
                                             resolve_concurrency)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def key(tmp_path) -> Path:
    k = tmp_path / "id_test"
    k.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
    return k


def _host(key: Path, **kw) -> dict:
    return {"host": "10.0.0.5", "user": "alice", "key_file": str(key), "python": "/opt/venv/bin/python", **kw}


def test_a_minimal_host_gets_the_defaults(key):
    (h,) = parse_hosts({"hosts": [_host(key)]})
    assert (h.host, h.port, h.user, h.python, h.gpus, h.trials_per_gpu) == (
        "10.0.0.5", 22, "alice", "/opt/venv/bin/python", None, 1)
    assert h.address == "alice@10.0.0.5:22" and h.slots is None


@pytest.mark.parametrize("data,message", [
    (None, "expected a mapping with a `hosts:` list"),
    ({"machines": []}, "expected a mapping with a `hosts:` list"),
    ({"hosts": []}, "non-empty list"),
    ({"hosts": [], "extra": 1}, "unknown top-level keys"),
    ({"hosts": ["10.0.0.5"]}, r"hosts\[0\] must be a mapping"),
])
def test_malformed_files_say_what_is_expected(data, message):
    with pytest.raises(HostsError, match=message):
        parse_hosts(data)


@pytest.mark.parametrize("override,message", [
    ({"user": None}, "missing user"),
    ({"python": None, "key_file": ""}, "missing key_file, python"),
    ({"pythonPath": "/x"}, r"unknown fields \['pythonPath'\]"),
    ({"port": 70000}, r"port must be in 1\.\.65535"),
    ({"port": "22"}, "port must be an integer"),
    ({"python": "python3"}, "python must be an absolute path on that host"),
    ({"python": "/opt/venv/bin/"}, "must name the interpreter, not its directory"),
    ({"gpus": []}, "gpus must be a non-empty list"),
    ({"gpus": [0, 0]}, "lists an index twice"),
    ({"gpus": [-1]}, r"gpus must be in 0\.\.inf"),
    ({"trials_per_gpu": 2}, "trials_per_gpu needs gpus"),
    ({"trials_per_gpu": 0, "gpus": [0]}, "trials_per_gpu must be in 1"),
])
def test_bad_host_fields_name_the_host_and_the_field(key, override, message):
    raw = {k: v for k, v in {**_host(key), **override}.items() if v is not None}
    with pytest.raises(HostsError, match=message) as e:
        parse_hosts({"hosts": [raw]}, "hosts.yml")
    assert "hosts.yml: hosts[0]" in str(e.value)


def test_a_missing_key_file_is_named(tmp_path):
    with pytest.raises(HostsError, match=r"key_file: .*id_missing does not exist"):
        parse_hosts({"hosts": [_host(tmp_path / "id_missing")]})


def test_duplicates_and_mixed_cpu_gpu_hosts_are_refused(key):
    with pytest.raises(HostsError, match="listed twice"):
        parse_hosts({"hosts": [_host(key), _host(key)]})
    with pytest.raises(HostsError, match="some hosts list gpus and some do not"):
        parse_hosts({"hosts": [_host(key, gpus=[0]), _host(key, host="10.0.0.6")]})


def test_load_hosts_resolves_key_files_relative_to_the_file(tmp_path, key):
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"hosts": [_host(Path(key.name), gpus=1)]}))
    (h,) = load_hosts(tmp_path / "hosts.yml")
    assert h.key_file == str(key)
    assert h.gpus == (1,)  # a single index is accepted
    with pytest.raises(HostsError, match="does not exist"):
        load_hosts(tmp_path / "nope.yml")
    (tmp_path / "bad.yml").write_text("hosts: [\n")
    with pytest.raises(HostsError, match="not valid YAML"):
        load_hosts(tmp_path / "bad.yml")


def test_the_example_hosts_file_is_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    hosts = load_hosts(ROOT / "examples" / "hosts.yml")
    assert [h.slots for h in hosts] == [8, 4]
    assert resolve_concurrency(None, None, 1, hosts) == 12
    with pytest.raises(ValueError, match="exceeds 2 host"):
        resolve_concurrency(13, None, 1, hosts)


def test_remote_config_is_what_nni_validates(key, tmp_path):
    """NNI's own validation accepts what we build, with pythonPath = the python's directory."""
    from nni.experiment.config import AlgorithmConfig, ExperimentConfig

    hosts = parse_hosts({"hosts": [_host(key, gpus=[0, 1], trials_per_gpu=1),
                                   _host(key, host="10.0.0.6", port=2222, gpus=[0], trials_per_gpu=3)]})
    config = ExperimentConfig("remote", trial_command="python -m search_spaces.trial", search_space={},
                              trial_code_directory=str(tmp_path), tuner=AlgorithmConfig(name="Random"),
                              trial_concurrency=resolve_concurrency(None, None, 1, hosts))
    configure_training_service(config, platform="remote", hosts=hosts, manager_ip="10.0.0.1")
    config.validate()
    c = config.canonical_copy()
    assert c.trial_concurrency == 5 and c.trial_gpu_number == 1 and c.nni_manager_ip == "10.0.0.1"
    m0, m1 = c.training_service.machine_list
    assert (m0.host, m0.port, m0.user, m0.python_path) == ("10.0.0.5", 22, "alice", "/opt/venv/bin")
    assert m0.gpu_indices == [0, 1] and m0.max_trial_number_per_gpu == 2  # 1 per GPU, fractional: see gpu_fields
    assert (m1.port, m1.gpu_indices, m1.max_trial_number_per_gpu) == (2222, [0], 3)
    assert str(m0.ssh_key_file) == str(key) and c.training_service.reuse_mode is False


def test_remote_nas_experiment_names_the_hosts_python_not_ours(key, tmp_path, tiny_dataset_dir, monkeypatch):
    """NNI's NAS trial command would name this machine's interpreter; remote trials get `python` on PATH."""
    from search_spaces.experiment import SearchConfig, build_experiment
    from search_spaces.training_services import trial_code_directory

    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"hosts": [_host(key)]}))
    cfg = SearchConfig.from_dict({"experiment": {"platform": "remote", "hosts": str(tmp_path / "hosts.yml"),
                                                 "manager_ip": "127.0.0.1", "max_trials": 2},
                                  "strategy": {"name": "random"}, "trial": {"device": "cpu"}})
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    exp, _, _ = build_experiment(cfg, tiny_dataset_dir, out)
    with trial_code_directory("remote", out) as code:
        c = exp.config.canonical_copy()
    assert Path(c.trial_code_directory) == code == out / "nni-experiments" / "code"
    assert [p.name for p in code.iterdir()] == ["README.txt"]  # what NNI uploads: nearly nothing
    assert c.trial_command == "PYTHONUNBUFFERED=1 python -m nni.nas.execution.training_service trial"
    assert sys.executable not in c.trial_command
    assert c.training_service.platform == "remote" and c.trial_concurrency == 1 and c.trial_gpu_number == 0
    assert Path.cwd() == tmp_path  # the working directory is restored


def test_search_config_platforms(tmp_path):
    from search_spaces.experiment import SearchConfig

    with pytest.raises(ValueError, match="unknown platform 'frameworkcontroller'.*nnictl"):
        SearchConfig.from_dict({"experiment": {"platform": "frameworkcontroller"}})
    (tmp_path / "s.yml").write_text(yaml.safe_dump({"experiment": {"platform": "remote", "hosts": "hosts.yml"}}))
    assert SearchConfig.from_file(tmp_path / "s.yml").experiment.hosts == str(tmp_path / "hosts.yml")


@pytest.mark.parametrize("flags,message", [
    (["--platform", "remote"], "--platform remote needs --hosts"),
    (["--hosts", "h.yml"], "--hosts is for --platform remote"),
    (["--gpus", "0", "--trials-per-gpu", "1", "--trial-concurrency", "2"], "trial concurrency 2 exceeds"),
    (["--platform", "remote", "--hosts", "missing.yml"], "hosts file missing.yml does not exist"),
])
def test_cli_platform_errors_are_clear(tmp_path, tiny_dataset_dir, capsys, monkeypatch, flags, message):
    from naslung.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yml").write_text(yaml.safe_dump({"strategy": {"name": "random"}, "trial": {"device": "cpu"}}))
    rc = main(["search", "--data", str(tiny_dataset_dir), "--config", "s.yml", "--out", str(tmp_path / "run"),
               "--port", "0", *flags])
    assert rc == 1
    assert message in capsys.readouterr().err
