"""The one door to NNI: import it here, and turn a broken or missing NNI into a clear error.

NNI is archived upstream; everything else in :mod:`search_spaces` reaches NNI through
:func:`require_nni`, and the pure parts (space, pruning, Pareto, reports) never import it, so a
drifted NNI breaks only ``naslung search`` and says why.
"""
from __future__ import annotations

import importlib
import logging
import os
import socket
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
