"""``python -m search_spaces.nnictl ARGS``: NNI's own ``nnictl``, as ``naslung search`` would run it.

The same command line as ``nnictl`` (``create --config examples/search.yml --port 8080``, ``stop ID``,
``view ID``, ...), with what a bare ``nnictl`` lacks here:

* ``create`` and ``resume`` print the security warning ``naslung search`` prints (NNI's manager listens on
  ALL interfaces without authentication), and check that the config's ``--data`` directory exists;
* this interpreter's bin directory comes first on PATH and the repository on PYTHONPATH, for the manager,
  tuner and trials (no activated venv needed);
* NNI's terminal lines come without colour codes, without advice to ``nnictl stop --all`` (which stops
  other people's experiments too) and NNI's manager gets 60 s to start instead of ~3 s.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from search_spaces.nni_api import SECURITY_WARNING, require_nni, venv_bin_first

REPO = Path(__file__).resolve().parents[1]


def _option(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return default


def check_trial_data(config_path: Path) -> None:
    """Refuse early when the trial command's ``--data DIR`` is not a prepared dataset (every trial would fail)."""
    import yaml

    cfg = yaml.safe_load(config_path.read_text()) or {}
    cmd = shlex.split(str(cfg.get("trialCommand", "")))
    if "--data" not in cmd or cmd.index("--data") + 1 >= len(cmd):
        return
    code_dir = (config_path.parent / str(cfg.get("trialCodeDirectory", "."))).resolve()
    data = Path(cmd[cmd.index("--data") + 1])
    data = data if data.is_absolute() else code_dir / data
    if not (data / "dataset.json").is_file():
        raise SystemExit(f"nnictl: the trial command trains on {data}, which is not a prepared dataset; create it "
                         f"first:\n  {Path(sys.executable).parent / 'naslung'} prepare --source lidc-shapes "
                         f"--out {data}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command == "stop" and any(a in ("--all", "-a") for a in argv[1:]):
        print("nnictl: not stopping --all: that stops every NNI experiment of this user, other runs included; "
              "give the ID of yours (nnictl experiment list)", file=sys.stderr)
        return 2
    if command in ("create", "resume", "view"):
        port = _option(argv, "--port", "-p", default="8080")
        if command == "create":
            config = _option(argv, "--config", "-c")
            if config and Path(config).is_file():
                check_trial_data(Path(config).resolve())
        print("WARNING: " + SECURITY_WARNING.format(port=port), flush=True)
    os.environ.update(venv_bin_first())
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + paths)
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # NNI's import, not ours to fix
    require_nni(("nni.experiment", "nni.tools.nnictl.nnictl"))  # also: plain NNI output, 60 s manager start
    from nni.tools.nnictl import nnictl

    sys.argv = ["nnictl", *argv]
    try:
        nnictl.parse_args()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else (print(e.code, file=sys.stderr) or 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
