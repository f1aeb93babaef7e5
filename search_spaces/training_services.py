"""Where NNI runs the trials: this machine (``local``, CPU or GPUs) or other machines over SSH (``remote``).

``naslung search`` hands NNI one training-service config; this module builds it, so the choice of
platform is one call in :func:`search_spaces.experiment.build_experiment` and everything that can be
checked before NNI starts is checked here, with messages that name the field and the fix:

* ``hosts.yml`` (the ``remote`` platform) is read and validated by :func:`load_hosts` -- NNI itself
  would accept a missing key file or a relative python path and fail minutes later inside its
  manager's log;
* :func:`preflight` logs into every host with the system ``ssh`` client before NNI starts and checks
  what a trial needs there (the python, ``import nni, search_spaces``, the dataset, a writable run
  directory);
* :func:`gpu_fields` turns ``gpus`` x ``trials_per_gpu`` into NNI's fields. NNI 3.0's GPU scheduler
  refuses a whole-GPU trial when the trial asks for as many GPUs as the machine has (``gpuNumber >=
  gpus.length`` in ``nni_node/common/trial_keeper/task_scheduler/scheduler.js``): with one trial per
  GPU on a one-GPU machine no trial would ever start. We therefore always ask for a fractional GPU
  (``maxTrialNumberPerGpu >= 2``) and bound the concurrency by the slots, which places one trial per
  GPU when ``trials_per_gpu`` is 1 (the scheduler picks the least-used GPU);
  ``tests/search_spaces/test_gpu_placement.py`` runs NNI's own scheduler with fake GPUs to show it.

Kubernetes (FrameworkController) is NNI's ``nnictl`` route, not a ``naslung search`` platform:
``examples/k8s/search-frameworkcontroller.yml`` (docs/scale-out.md says why).
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

PLATFORMS = ("local", "remote")

# The python the trial command names on a remote host: NNI puts the directory of the host's
# `python:` first on PATH for the worker and its trials, so the bare name finds that interpreter.
REMOTE_TRIAL_PYTHON = "python"


class HostsError(ValueError):
    """hosts.yml is missing, malformed or names something unusable (the message says which and how to fix it)."""


@dataclass(frozen=True)
class HostSpec:
    """One SSH worker for NNI's remote training service (one entry of hosts.yml).

    ``python`` is the absolute path of the interpreter trials use on that host (a venv with naslung
    and nni==3.0 installed, e.g. ``/home/alice/NASLung/.venv/bin/python``): NNI runs trials through
    a non-login SSH shell, whose PATH rarely holds the right python.
    """

    host: str
    user: str
    key_file: str
    python: str
    port: int = 22
    gpus: tuple[int, ...] | None = None   # GPU indices trials may use there; None = CPU trials
    trials_per_gpu: int = 1

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def slots(self) -> int | None:
        """GPU trials this host runs at once (GPUs x trials per GPU); None on a CPU host (no bound)."""
        return len(self.gpus) * self.trials_per_gpu if self.gpus else None


HOST_FIELDS = {f.name for f in fields(HostSpec)}
REQUIRED_HOST_FIELDS = ("host", "user", "key_file", "python")


def _int(value: Any, where: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HostsError(f"{where} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise HostsError(f"{where} must be in {low}..{high if high is not None else 'inf'}, got {value}")
    return value


def parse_hosts(data: Any, source: str = "hosts.yml", base_dir: Path | None = None) -> list[HostSpec]:
    """Validate the parsed YAML of a hosts file (``{"hosts": [{host, user, key_file, python, ...}, ...]}``).

    ``key_file`` may start with ``~``; a relative one is taken relative to ``base_dir`` (the hosts
    file's directory). The key file must exist here (the manager reads it); the python path must be
    absolute (it lives on the remote host, so it cannot be checked here: :func:`preflight` does).
    """
    if not isinstance(data, dict) or "hosts" not in data:
        raise HostsError(f"{source}: expected a mapping with a `hosts:` list, e.g.\n"
                         f"hosts:\n  - host: 10.0.0.5\n    user: alice\n    key_file: ~/.ssh/id_ed25519\n"
                         f"    python: /home/alice/NASLung/.venv/bin/python")
    unknown_top = set(data) - {"hosts"}
    if unknown_top:
        raise HostsError(f"{source}: unknown top-level keys {sorted(unknown_top)} (only `hosts:`)")
    entries = data["hosts"]
    if not isinstance(entries, list) or not entries:
        raise HostsError(f"{source}: `hosts:` must be a non-empty list of hosts")
    hosts: list[HostSpec] = []
    for i, raw in enumerate(entries):
        where = f"{source}: hosts[{i}]"
        if not isinstance(raw, dict):
            raise HostsError(f"{where} must be a mapping (host, user, key_file, python, ...), got {raw!r}")
        unknown = set(raw) - HOST_FIELDS
        if unknown:
            raise HostsError(f"{where}: unknown fields {sorted(unknown)} (known: {sorted(HOST_FIELDS)})")
        missing = [k for k in REQUIRED_HOST_FIELDS if raw.get(k) in (None, "")]
        if missing:
            raise HostsError(f"{where}: missing {', '.join(missing)}")
        for k in REQUIRED_HOST_FIELDS:
            if not isinstance(raw[k], str):
                raise HostsError(f"{where}.{k} must be a string, got {raw[k]!r}")
        where = f"{source}: hosts[{i}] ({raw['host']})"
        port = _int(raw.get("port", 22), f"{where}.port", low=1, high=65535)
        key = Path(raw["key_file"]).expanduser()
        if not key.is_absolute():
            key = (base_dir or Path.cwd()) / key
        if not key.is_file():
            raise HostsError(f"{where}.key_file: {key} does not exist (the SSH private key the manager logs in with)")
        python = raw["python"]
        if not python.startswith("/"):
            raise HostsError(f"{where}.python must be an absolute path on that host, e.g. "
                             f"/home/{raw['user']}/NASLung/.venv/bin/python; got {python!r} (NNI runs trials "
                             f"through a non-login SSH shell whose PATH rarely has the right python)")
        if python.endswith("/"):
            raise HostsError(f"{where}.python must name the interpreter, not its directory: {python!r}")
        gpus = raw.get("gpus")
        if gpus is not None:
            if isinstance(gpus, int) and not isinstance(gpus, bool):
                gpus = [gpus]
            if not isinstance(gpus, list) or not gpus:
                raise HostsError(f"{where}.gpus must be a non-empty list of GPU indices such as [0, 1], or omitted "
                                 f"for CPU trials; got {raw.get('gpus')!r}")
            gpus = [_int(g, f"{where}.gpus", low=0) for g in gpus]
            if len(set(gpus)) != len(gpus):
                raise HostsError(f"{where}.gpus lists an index twice: {gpus}")
        tpg = _int(raw.get("trials_per_gpu", 1), f"{where}.trials_per_gpu", low=1)
        if tpg != 1 and gpus is None:
            raise HostsError(f"{where}: trials_per_gpu needs gpus (a CPU host runs one trial at a time)")
        hosts.append(HostSpec(host=raw["host"], user=raw["user"], key_file=str(key), python=python, port=port,
                              gpus=tuple(gpus) if gpus is not None else None, trials_per_gpu=tpg))
    seen: set[tuple[str, int, str]] = set()
    for h in hosts:
        k = (h.host, h.port, h.user)
        if k in seen:
            raise HostsError(f"{source}: {h.address} is listed twice (give one entry per machine; use gpus/"
                             f"trials_per_gpu for more trials there)")
        seen.add(k)
    if len({h.gpus is None for h in hosts}) > 1:
        raise HostsError(f"{source}: some hosts list gpus and some do not; NNI's trialGpuNumber is one number "
                         f"for the whole experiment, so run GPU hosts and CPU hosts as separate searches")
    return hosts


def load_hosts(path: str | Path) -> list[HostSpec]:
    """Read and validate a hosts file (format: :func:`parse_hosts`, ``examples/hosts.yml``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise HostsError(f"hosts file {path} does not exist (see examples/hosts.yml for the format)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise HostsError(f"hosts file {path} is not valid YAML: {e}") from None
    return parse_hosts(data, str(path), base_dir=path.resolve().parent)


# --------------------------------------------------------------------------- GPUs
def gpu_fields(gpus: Sequence[int], trials_per_gpu: int) -> dict[str, Any]:
    """NNI's GPU fields for ``trials_per_gpu`` trials on each of ``gpus``.

    NNI gives a trial ``trialGpuNumber / maxTrialNumberPerGpu`` of a GPU. We ask for a fractional
    GPU even when ``trials_per_gpu`` is 1 (``maxTrialNumberPerGpu`` 2, concurrency bounded by
    :func:`slots`): NNI 3.0 never schedules a whole-GPU trial on a machine with exactly as many GPUs
    as the trial asks for (see the module docstring), and its scheduler puts a fractional trial on
    the least-used GPU, so at most one trial per GPU runs while concurrency <= len(gpus).
    """
    if not gpus:
        raise ValueError("gpu_fields needs at least one GPU index")
    if trials_per_gpu < 1:
        raise ValueError(f"trials_per_gpu must be >= 1, got {trials_per_gpu}")
    return {"trial_gpu_number": 1, "gpu_indices": [int(g) for g in gpus],
            "max_trial_number_per_gpu": max(2, int(trials_per_gpu)), "use_active_gpu": True}


def slots(gpus: Sequence[int] | None, trials_per_gpu: int, hosts: Sequence[HostSpec] | None = None) -> int | None:
    """GPU trials that can run at once: local GPUs x trials per GPU, or the sum over GPU hosts; None = no bound (CPU)."""
    if hosts:
        per_host = [h.slots for h in hosts]
        return None if any(n is None for n in per_host) else sum(per_host)  # type: ignore[arg-type]
    if gpus:
        return len(gpus) * int(trials_per_gpu)
    return None


def resolve_concurrency(requested: int | None, gpus: Sequence[int] | None, trials_per_gpu: int,
                        hosts: Sequence[HostSpec] | None = None) -> int:
    """The trial concurrency: the request, or by default every GPU slot, else one per CPU host, else 1.

    More than the slots is refused: the extra trials would only wait for a slot, and with
    ``trials_per_gpu`` 1 two trials would share a GPU (see :func:`gpu_fields`).
    """
    n = slots(gpus, trials_per_gpu, hosts)
    if requested is None:
        return n or (len(hosts) if hosts else 1)  # CPU: one trial per host
    if requested < 1:
        raise ValueError(f"trial concurrency must be >= 1, got {requested}")
    if n is not None and requested > n:
        where = (f"{len(hosts)} host(s) with {n} trial slot(s) in all" if hosts
                 else f"{len(gpus or ())} GPU(s) x {trials_per_gpu} trial(s) per GPU = {n} slot(s)")
        raise ValueError(f"trial concurrency {requested} exceeds {where}; lower --trial-concurrency or raise "
                         f"--trials-per-gpu (or the hosts' trials_per_gpu)")
    return requested


# --------------------------------------------------------------------------- NNI config
def configure_training_service(config: Any, *, platform: str = "local", gpus: Sequence[int] | None = None,
                               trials_per_gpu: int = 1, hosts: Sequence[HostSpec] | None = None,
                               manager_ip: str | None = None) -> None:
    """Fill ``config`` (an NNI ``ExperimentConfig`` / ``NasExperimentConfig``) for ``platform``.

    local: CPU trials (``trialGpuNumber`` 0) or GPUs per :func:`gpu_fields`. remote: one
    ``RemoteMachineConfig`` per host (``pythonPath`` = the directory of its python, which NNI puts
    first on PATH), the NAS trial command with the bare ``python`` that PATH then finds (NNI would
    otherwise name *this* machine's interpreter path), and ``nniManagerIp`` when given.
    """
    require_platform(platform)
    if platform == "local":
        if hosts:
            raise ValueError("hosts are for --platform remote")
        if manager_ip:
            config.nni_manager_ip = manager_ip
        if gpus:
            g = gpu_fields(gpus, trials_per_gpu)
            config.trial_gpu_number = g["trial_gpu_number"]
            config.training_service.use_active_gpu = g["use_active_gpu"]
            config.training_service.gpu_indices = g["gpu_indices"]
            config.training_service.max_trial_number_per_gpu = g["max_trial_number_per_gpu"]
        else:
            config.trial_gpu_number = 0
        return
    from nni.experiment.config import RemoteConfig, RemoteMachineConfig

    if gpus:
        raise ValueError("--gpus is for the local platform; with --platform remote list each host's gpus in hosts.yml")
    if not hosts:
        raise ValueError("--platform remote needs --hosts hosts.yml (or experiment.hosts in the search config)")
    machines = []
    for h in hosts:
        m = RemoteMachineConfig(host=h.host, port=h.port, user=h.user, ssh_key_file=h.key_file,
                                python_path=str(Path(h.python).parent))
        if h.gpus:
            g = gpu_fields(h.gpus, h.trials_per_gpu)
            m.gpu_indices, m.max_trial_number_per_gpu, m.use_active_gpu = (
                g["gpu_indices"], g["max_trial_number_per_gpu"], g["use_active_gpu"])
        machines.append(m)
    ts = config.training_service if isinstance(config.training_service, RemoteConfig) else RemoteConfig()
    ts.machine_list = machines
    ts.reuse_mode = False
    config.training_service = ts
    config.trial_gpu_number = 1 if hosts[0].gpus else 0
    if manager_ip:
        config.nni_manager_ip = manager_ip
    if hasattr(config, "_trial_command_params"):  # NAS experiments compose their own trial command
        config._trial_command_params = {"python": REMOTE_TRIAL_PYTHON, "envs": "PYTHONUNBUFFERED=1"}


def require_platform(platform: str) -> None:
    if platform not in PLATFORMS:
        hint = (" (FrameworkController on Kubernetes runs through nnictl: examples/k8s/search-frameworkcontroller.yml, "
                "docs/scale-out.md)" if platform in ("frameworkcontroller", "kubernetes", "k8s") else "")
        raise ValueError(f"unknown platform {platform!r}: choose one of {', '.join(PLATFORMS)}{hint}")


def code_directory(platform: str, out: str | Path) -> Path:
    """The trials' code directory NNI sees: the current one (local), a near-empty ``OUT/nni-experiments/code`` (remote).

    The remote platform copies it to every host over SFTP, so a search started in a repository with
    a ``.venv`` would try to upload all of it (and NNI refuses more than 2,000 files or 300 MB);
    trials import our code from the host's python, not from this copy.
    """
    if platform != "remote":
        return Path.cwd()
    code = Path(out).resolve() / "nni-experiments" / "code"
    code.mkdir(parents=True, exist_ok=True)
    readme = code / "README.txt"  # NNI's tarball refuses an empty directory ("no files or directories specified")
    if not readme.is_file():
        readme.write_text("NNI copies this directory to every remote host as the trials' code directory. It is\n"
                          "deliberately (almost) empty: trials import naslung from the python named in hosts.yml.\n")
    return code


@contextlib.contextmanager
def trial_code_directory(platform: str, out: str | Path) -> Iterator[Path]:
    """Work in :func:`code_directory` while NNI starts and runs (NNI 3.0 NAS insists it is the current directory)."""
    code = code_directory(platform, out)
    before = os.getcwd()
    os.chdir(code)
    try:
        yield code
    finally:
        os.chdir(before)


# --------------------------------------------------------------------------- preflight
_PREFLIGHT = r"""
import json, os, sys
out = {"python": sys.version.split()[0]}
for mod in ("nni", "torch", "search_spaces.trial"):
    try:
        m = __import__(mod)
        out[mod] = getattr(m, "__version__", "ok")
    except Exception as e:
        out[mod] = "ERROR " + type(e).__name__ + ": " + str(e)
data, run = sys.argv[1], sys.argv[2]
out["data"] = os.path.isfile(os.path.join(data, "dataset.json"))
try:
    os.makedirs(run, exist_ok=True)
    out["run_writable"] = os.access(run, os.W_OK)
except OSError:
    out["run_writable"] = False
print("NASLUNG-PREFLIGHT " + json.dumps(out))
"""


class PreflightError(RuntimeError):
    """A host cannot run trials; the message names the host, what is wrong and how to fix it."""


def ssh_command(host: HostSpec, remote_command: str, known_hosts: str | None = None) -> list[str]:
    """The ``ssh`` command line that logs into ``host`` like NNI will (key file, port, no password prompt)."""
    cmd = ["ssh", "-i", host.key_file, "-p", str(host.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
           "-o", "StrictHostKeyChecking=accept-new", "-o", "IdentitiesOnly=yes"]
    if known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={known_hosts}"]
    return cmd + [f"{host.user}@{host.host}", remote_command]


def preflight(hosts: Sequence[HostSpec], data: str | Path, out: str | Path, *, timeout_s: float = 60.0,
              known_hosts: str | None = None) -> list[dict[str, Any]]:
    """Log into every host and check what its trials need; raise :class:`PreflightError` on the first problem.

    Trials read ``data`` and write ``out`` at the *same absolute paths* as on this machine (NNI passes
    them verbatim), so both must be there: a shared filesystem (NFS) or a copy at the same path for the
    data, and a shared run directory, or the trial records never reach the report. Returns what each
    host reported (python, nni and torch versions). Without an ``ssh`` client nothing is checked and an
    empty list comes back (NNI then reports problems in its manager log).
    """
    if shutil.which("ssh") is None:
        return []
    import nni

    data, out = str(Path(data).resolve()), str(Path(out).resolve())
    reports = []
    for h in hosts:
        remote = f"{shlex.quote(h.python)} -c {shlex.quote(_PREFLIGHT)} {shlex.quote(data)} {shlex.quote(out)}"
        try:
            res = subprocess.run(ssh_command(h, remote, known_hosts), capture_output=True, text=True,
                                 timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PreflightError(f"{h.address}: no answer over SSH within {timeout_s:.0f} s") from None
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("NASLUNG-PREFLIGHT ")), None)
        detail = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        if res.returncode == 255:
            raise PreflightError(f"{h.address}: SSH login with key {h.key_file} failed: {detail}")
        if line is None and res.returncode in (126, 127):
            raise PreflightError(f"{h.address}: python {h.python} not found there (hosts.yml `python:` must be the "
                                 f"absolute path of an interpreter with naslung and nni==3.0 installed)")
        if line is None:
            raise PreflightError(f"{h.address}: the check with {h.python} failed (exit {res.returncode}): {detail}")
        rep = json.loads(line.split(" ", 1)[1])
        for mod in ("nni", "torch", "search_spaces.trial"):
            if str(rep.get(mod, "")).startswith("ERROR"):
                raise PreflightError(f"{h.address}: {h.python} cannot import {mod}: {rep[mod][6:]} (install naslung "
                                     f"there: `make venv` in a checkout, or pip install -e . into that venv)")
        if rep["nni"] != nni.__version__:
            raise PreflightError(f"{h.address}: NNI {rep['nni']} there, {nni.__version__} here; NNI's manager and "
                                 f"workers must match (pip install nni=={nni.__version__})")
        if not rep["data"]:
            raise PreflightError(f"{h.address}: the dataset {data} is not there (no dataset.json); trials read it at "
                                 f"the same absolute path: share it (NFS) or copy it to that path")
        if not rep["run_writable"]:
            raise PreflightError(f"{h.address}: cannot write the run directory {out}; trials write their records "
                                 f"there: mount the same shared directory at that path")
        reports.append({"host": h.address, **rep})
    return reports
