"""The `naslung search` command surface, the shipped configs, and NNI behind our interface."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from naslung.cli.main import build_parser
from search_spaces.experiment import SearchConfig
from search_spaces.space import SpaceSpec, encoding_labels

ROOT = Path(__file__).resolve().parents[2]


def test_help_has_a_real_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--config", "--max-trials", "--trial-concurrency", "--gpus", "--trials-per-gpu",
                 "--port", "--resume", "--out"):
        assert flag in out
    assert "naslung search --data runs/data --config examples/search_naslung.yml" in out
    assert "ALL interfaces" in out


def test_gpus_flag_parses_indices():
    args = build_parser().parse_args(["search", "--out", "r", "--gpus", "0,1", "--trials-per-gpu", "4"])
    assert args.gpus == [0, 1] and args.trials_per_gpu == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--out", "r", "--gpus", "a"])


NNI_EXAMPLES = [("search.yml", "search_naslung_cpu.yml", 0), ("search_gpu.yml", "search_naslung.yml", 1)]


@pytest.mark.parametrize("nni_file,search_file,gpus", NNI_EXAMPLES)
def test_shipped_configs_are_valid_and_agree(nni_file, search_file, gpus):
    import shlex

    cfg = SearchConfig.from_file(ROOT / "examples" / search_file)
    spec = SpaceSpec.from_dict(cfg.space)
    nni_cfg = yaml.safe_load((ROOT / "examples" / nni_file).read_text())
    cmd = shlex.split(nni_cfg["trialCommand"])
    # the venv's python, not a bare `python` (that is the system one unless the venv is active: no torch)
    assert cmd[:3] == [".venv/bin/python", "-m", "search_spaces.trial"]
    assert cmd[cmd.index("--config") + 1] == f"examples/{search_file}"
    assert nni_cfg["tuner"]["classArgs"]["config"] == f"examples/{search_file}"
    assert nni_cfg["tuner"]["className"] == "search_spaces.tuner.NasLungTuner"
    assert nni_cfg["trialGpuNumber"] == gpus
    assert sorted(nni_cfg["searchSpace"]) == sorted(encoding_labels(spec))
    assert nni_cfg["searchSpace"]["b0_width"]["_value"] == list(spec.widths)
    assert nni_cfg["searchSpace"]["s0_depth"]["_value"] == list(range(1, spec.max_stage_depth + 1))
    assert nni_cfg["maxTrialNumber"] == cfg.experiment.max_trials
    assert "stop --all" not in (ROOT / "examples" / nni_file).read_text()


def test_cpu_example_searches_the_demo_space_on_the_cpu():
    from naslung.cli.demo import DEMO_SPACE

    cfg = SearchConfig.from_file(ROOT / "examples" / "search_naslung_cpu.yml")
    assert {k: cfg.space[k] for k in DEMO_SPACE} == DEMO_SPACE
    assert cfg.trial["device"] == "cpu" and cfg.experiment.gpus is None and cfg.experiment.trial_concurrency == 1


@pytest.mark.parametrize("nni_file", [n for n, _, _ in NNI_EXAMPLES])
def test_nni_config_is_accepted_by_nni(nni_file):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    from nni.experiment.config import ExperimentConfig

    raw = yaml.safe_load((ROOT / "examples" / nni_file).read_text())
    config = ExperimentConfig(**raw)
    config._base_path = ROOT / "examples"
    canon = config.canonical_copy()
    assert Path(canon.trial_code_directory).resolve() == ROOT
    assert canon.tuner.class_name == "search_spaces.tuner.NasLungTuner"
    if nni_file == "search_gpu.yml":  # NNI's own assessor on our trials' per-epoch results
        assert canon.assessor.name == "Medianstop" and canon.assessor.class_args["start_step"] == 10


def test_nnictl_wrapper_warns_checks_data_and_never_stops_all(tmp_path, capsys, monkeypatch):
    import os

    from search_spaces import nnictl

    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # restored afterwards: main() puts the venv first
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    assert nnictl.main(["stop", "--all"]) == 2
    assert "give the ID" in capsys.readouterr().err
    cfg = tmp_path / "exp.yml"
    cfg.write_text("trialCommand: .venv/bin/python -m search_spaces.trial --data missing-data --out r\n"
                   "trialCodeDirectory: .\n")
    with pytest.raises(SystemExit, match="missing-data, which is not a prepared dataset"):
        nnictl.main(["create", "--config", str(cfg), "--port", "8123"])
    called = []
    import nni.tools.nnictl.nnictl as real

    monkeypatch.setattr(real, "parse_args", lambda: called.append(__import__("sys").argv[1:]))
    assert nnictl.main(["view", "abc", "--port", "8124"]) == 0
    assert called == [["view", "abc", "--port", "8124"]]
    out = capsys.readouterr().out
    assert "listens on ALL network interfaces" in out and "port 8124" in out
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(__import__("sys").executable).parent)


def test_search_config_errors_name_the_field(tmp_path):
    p = tmp_path / "bad.yml"
    p.write_text("space: {widths: [4, 8], max_blocks: 2}\n")
    with pytest.raises(ValueError, match="bad.yml.*min_blocks"):
        SearchConfig.from_file(p)
    p.write_text("experiment: {max_trial: 3}\n")
    with pytest.raises(ValueError, match="max_trial"):
        SearchConfig.from_file(p)


def test_broken_nni_gives_a_clear_error(monkeypatch):
    from search_spaces import nni_api

    real_import = nni_api.importlib.import_module

    def broken(name, *a, **kw):
        if name.startswith("nni"):
            raise ImportError("simulated drift: cannot import name 'Mutable'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(nni_api.importlib, "import_module", broken)
    with pytest.raises(nni_api.NNIUnavailable, match="needs NNI 3.0.*simulated drift.*pip install nni==3.0"):
        nni_api.require_nni()


def test_port_helpers():
    import socket

    from search_spaces.nni_api import check_port_free, free_port, venv_bin_first

    port = free_port()
    check_port_free(port)
    with socket.socket() as s:
        s.bind(("", port))
        s.listen(1)
        with pytest.raises(RuntimeError, match=f"port {port} is already in use"):
            check_port_free(port)
    import sys

    assert venv_bin_first({"PATH": "/usr/bin"})["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_resume_patch_skips_the_import_data_command_nni_cannot_parse():
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    from nni.runtime.tuner_command_channel.channel import TunerCommandChannel
    from nni.runtime.tuner_command_channel.command_type import CommandType

    from search_spaces.nni_api import patch_nas_resume

    class Fake(TunerCommandChannel):
        def __init__(self, messages):
            self.messages = list(messages)

        def _receive(self):
            return self.messages.pop(0)

    messages = [(CommandType.ImportData, '[{"parameter": {}, "value": 0.5}]'), (CommandType.RequestTrialJobs, "2")]
    patch_nas_resume()
    patch_nas_resume()  # idempotent
    received = Fake(messages).receive()
    assert received.command_type == CommandType.RequestTrialJobs and received.count == 2
