"""The one door to NNI: import it here, and turn a broken or missing NNI into a clear error.

NNI is archived upstream; everything else in :mod:`search_spaces` reaches NNI through
:func:`require_nni`, and the pure parts (space, pruning, Pareto, reports) never import it, so a
drifted NNI breaks only ``naslung search`` and says why.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import string
import sys
import warnings
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

SUPPORTED = ("3.0",)
SECURITY_WARNING = ("NNI's manager (REST API and web UI) listens on ALL network interfaces without "
                    "authentication: anyone who can reach port {port} can read and stop this experiment. "
                    "Run it on a trusted network or behind a firewall.")


class NNIUnavailable(RuntimeError):
    """NNI cannot be imported or does not provide the API this project was written against."""


NAS_MODULES = ("nni.nas.nn.pytorch", "nni.nas.experiment", "nni.nas.strategy", "nni.nas.evaluator",
               "nni.experiment", "nni.mutable")


def require_nni(modules: tuple[str, ...] = NAS_MODULES) -> ModuleType:
    """Import NNI (and ``modules`` of it) or raise :class:`NNIUnavailable` naming the cause and the fix.

    The default is the NAS API (it pulls in torch and Lightning: seconds); the nnictl tuner asks
    only for ``("nni.tuner",)`` because NNI gives a tuner 10 seconds to connect.
    """
    try:
        with warnings.catch_warnings():
            # NNI 3.0 scans torch.nn for layers and warns about every newer torch class it does not know.
            warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*", category=RuntimeWarning)
            nni = importlib.import_module("nni")
            for mod in modules:
                importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - any import failure means "NNI is broken here"
        raise NNIUnavailable(
            f"naslung search needs NNI 3.0, but importing it failed: {type(e).__name__}: {e}. "
            f"Install it with `pip install nni==3.0` (python {sys.version_info.major}.{sys.version_info.minor})."
        ) from e
    # NNI prints its own (coloured) log lines through a handler on the "nni" logger; propagating them
    # to the CLI's root handler printed every line twice.
    logging.getLogger("nni").propagate = False
    tidy_nni_output()
    patch_manager_start()
    version = getattr(nni, "__version__", "?")
    if not any(str(version).startswith(v) for v in SUPPORTED):
        log.warning("NNI %s is untested here (written against %s)", version, ", ".join(SUPPORTED))
    return nni


def venv_bin_first(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose PATH starts with this interpreter's bin (nnictl, and python for trials)."""
    env = dict(os.environ if env is None else env)
    bin_dir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != bin_dir:
        env["PATH"] = os.pathsep.join([bin_dir] + [p for p in parts if p and p != bin_dir])
    return env


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    """Raise a clear error when ``port`` is taken (NNI itself would fail obscurely later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise RuntimeError(f"port {port} is already in use ({e.strerror}); another NNI experiment may be "
                               f"running there (see `nnictl experiment list`), or pick another with --port") from None


def patch_nas_resume() -> None:
    """Let NNI 3.0 NAS experiments resume: ignore the ImportData command on the tuner channel.

    On resume NNI's manager replays earlier results to the tuner as ``ImportData``; NNI 3.0's NAS
    channel (``TunerCommandChannel.receive``) raises ``ValueError: Unknown command type`` on it, which
    kills the listener thread and hangs the strategy forever. Our strategies restore their state from
    NNI's checkpoint instead, so the command can be skipped. Idempotent; a no-op if NNI changes.
    """
    try:
        from nni.runtime.tuner_command_channel.channel import TunerCommandChannel
    except ImportError:  # pragma: no cover - a different NNI; nothing to patch
        return
    if getattr(TunerCommandChannel.receive, "_naslung_patched", False):
        return
    original = TunerCommandChannel.receive

    def receive(self):
        while True:
            try:
                return original(self)
            except ValueError as e:
                if "Unknown command type" not in str(e):
                    raise
                log.info("ignoring NNI manager command (%s): NAS strategies restore state from the checkpoint", e)

    receive._naslung_patched = True  # type: ignore[attr-defined]
    TunerCommandChannel.receive = receive


def early_stop_trial(engine, trial_id: str) -> None:
    """Stop NNI trial ``trial_id`` as NNI's assessor dispatcher does (status ``EARLY_STOPPED``).

    NNI 3.0's NAS engine (``TrainingServiceExecutionEngine``) talks to the manager over the tuner
    command channel but exposes no way to kill a trial; the manager accepts the same ``KillTrialJob``
    command its HPO dispatcher sends (``nni.runtime.msg_dispatcher``) and marks the trial early
    stopped. Raises ``RuntimeError`` when the engine has no such channel (another NNI version).
    """
    from nni.common.serializer import dump
    from nni.runtime.tuner_command_channel.command_type import CommandType

    channel = getattr(engine, "_channel", None)
    send = getattr(channel, "_send", None)
    if send is None:
        raise RuntimeError(f"cannot stop trial {trial_id}: {type(engine).__name__} has no tuner command channel "
                           f"(NNI {getattr(require_nni(('nni',)), '__version__', '?')}; NNI 3.0 is pinned)")
    send(CommandType.KillTrialJob, dump(str(trial_id)))


# --------------------------------------------------------------------- NNI's terminal output
# Lines NNI logs that are wrong advice for our users: keeping a finished process alive to view the
# UI, and stopping every experiment on the machine (other people's included).
_DROPPED_ADVICE = ("time.sleep(FOREVER)",)
_STOP_ALL = re.compile(r'\s*or\s+"?nnictl stop --all"?')


class _PlainNNIFormatter(logging.Formatter):
    """NNI's stdout lines without ANSI colours (its ``${GREEN}`` templates and level colours)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = _ANSI.sub("", string.Template(record.getMessage()).safe_substitute(_NO_COLOUR))
        msg = _STOP_ALL.sub("", msg)
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"[{self.formatTime(record, '%Y-%m-%d %H:%M:%S')}] nni: {level}{msg}"


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(a in record.getMessage() for a in _DROPPED_ADVICE)


class _NoColour(dict):
    def __missing__(self, key: str) -> str:  # ${CYAN}, ${RESET}, ... -> nothing
        return ""


_NO_COLOUR = _NoColour()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tidy_nni_output() -> None:
    """Plain NNI log lines on the terminal: no colour codes, no advice to sleep forever or to stop --all.

    NNI 3.0 writes its terminal lines through one handler (``nni.runtime.log._handlers['_stdout_']``);
    its experiment log files are untouched. Idempotent; a no-op if NNI changes.
    """
    try:
        from nni.runtime import log as nni_log
    except ImportError:  # pragma: no cover
        return
    for handler in list(getattr(nni_log, "_handlers", {}).values()) + logging.getLogger("nni").handlers:
        if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
            continue
        if not isinstance(handler.formatter, _PlainNNIFormatter):
            handler.setFormatter(_PlainNNIFormatter())
        if not any(isinstance(f, _DropAdvice) for f in handler.filters):
            handler.addFilter(_DropAdvice())


MANAGER_START_TIMEOUT_S = 60.0


def patch_manager_start(timeout_s: float = MANAGER_START_TIMEOUT_S) -> None:
    """Give NNI's manager (a node.js process) ``timeout_s`` to answer instead of NNI 3.0's ~3 s.

    On a loaded 2-core box node.js alone can take longer than 3 s to start, and the experiment then
    fails with "Create experiment failed: ... Connection refused". Idempotent; a no-op if NNI changes.
    """
    try:
        from nni.experiment import launcher, rest
    except ImportError:  # pragma: no cover
        return
    if getattr(launcher._check_rest_server, "_naslung_patched", False):  # noqa: SLF001
        return
    import time

    def _check_rest_server(port: int, retry: int = 3, url_prefix: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rest.get(port, "/check-status", url_prefix)
                return
            except Exception:  # noqa: BLE001 - not up yet; the last attempt raises NNI's own error
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    _check_rest_server._naslung_patched = True  # type: ignore[attr-defined]
    launcher._check_rest_server = _check_rest_server  # noqa: SLF001
