"""The nnictl configs for scale-out searches are what NNI 3.0's own config validation accepts.

examples/search_remote.yml (remote SSH hosts) and examples/k8s/search-frameworkcontroller.yml
(FrameworkController on Kubernetes) are loaded the way nnictl loads them
(``ExperimentConfig.load``), validated and canonicalised by NNI's classes, and cross-checked against
our trial CLI and NNI's own trial-pod layout. No cluster and no SSH host are contacted here (the
remote platform is exercised for real by ``make test-remote``).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRIAL_FLAGS = set(re.findall(r'add_argument\("(--[a-z-]+)"', (ROOT / "search_spaces" / "trial.py").read_text(encoding="utf-8")))


def _load(path: Path):
    from nni.experiment.config import ExperimentConfig

    return ExperimentConfig.load(path)


def _check_trial_command(command: str, code_dir: Path) -> dict[str, str]:
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "search_spaces.trial"], argv
    opts = dict(zip(argv[3::2], argv[4::2]))
    assert set(opts) <= TRIAL_FLAGS and {"--config", "--data", "--out"} <= set(opts), opts
    # --config is relative to the trial's working directory: the copy of trialCodeDirectory
    assert (code_dir / opts["--config"]).is_file(), f"{opts['--config']} is not in {code_dir}"
    return opts


def test_frameworkcontroller_config_passes_nni_validation():
    from nni.experiment.config.training_services import FrameworkControllerConfig

    path = ROOT / "examples" / "k8s" / "search-frameworkcontroller.yml"
    config = _load(path)
    config.validate()
    c = config.canonical_copy()
    ts = c.training_service
    assert isinstance(ts, FrameworkControllerConfig) and ts.platform == "frameworkcontroller"
    assert ts.reuse_mode is False and ts.storage.storage_type == "nfs" and ts.storage.server and ts.storage.path
    (role,) = ts.task_roles
    assert role.task_number == 1 and role.gpu_number == c.trial_gpu_number == 1
    assert role.framework_attempt_completion_policy.min_succeed_task_count == 1
    assert c.nni_manager_ip, "pods must be told where the manager is"
    assert c.tuner.class_name == "search_spaces.tuner.NasLungTuner"
    assert (Path(c.tuner.code_directory) / "search_spaces" / "tuner.py").is_file()
    opts = _check_trial_command(role.command, Path(c.trial_code_directory))
    # NNI mounts the NFS export at this path in every trial pod (nni_node kubernetesTrainingService.js)
    import nni_node

    ts_js = (Path(nni_node.__path__[0]) / "training_service" / "kubernetes" / "kubernetesTrainingService.js").read_text(encoding="utf-8")
    mount = re.search(r"CONTAINER_MOUNT_PATH = '([^']+)'", ts_js).group(1)
    assert opts["--data"].startswith(mount + "/") and opts["--out"].startswith(mount + "/"), (mount, opts)


def test_frameworkcontroller_config_rejects_what_nni_rejects(tmp_path):
    """The test above can fail: NNI's validation catches a broken storage section."""
    text = (ROOT / "examples" / "k8s" / "search-frameworkcontroller.yml").read_text(encoding="utf-8")
    bad = tmp_path / "k8s" / "bad.yml"
    bad.parent.mkdir()
    bad.write_text(text.replace("storageType: nfs", "storageType: s3"))
    with pytest.raises(ValueError, match="storage_type"):
        _load(bad).validate()


def test_remote_nnictl_config_passes_nni_validation(tmp_path, monkeypatch):
    from nni.experiment.config import RemoteConfig

    monkeypatch.setenv("HOME", str(tmp_path))  # NNI checks that sshKeyFile (~/.ssh/id_ed25519) exists
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    config = _load(ROOT / "examples" / "search_remote.yml")
    config.validate()
    c = config.canonical_copy()
    assert isinstance(c.training_service, RemoteConfig) and len(c.training_service.machine_list) == 2
    for m in c.training_service.machine_list:
        assert m.python_path.startswith("/") and m.python_path.endswith("/bin")  # a directory, as NNI wants
    assert c.nni_manager_ip
    opts = _check_trial_command(c.trial_command, Path(c.trial_code_directory))
    assert Path(opts["--data"]).is_absolute() and Path(opts["--out"]).is_absolute()  # same paths on every host
    assert sum(1 for _ in Path(c.trial_code_directory).rglob("*")) < 2000  # NNI's upload limit
