"""A throwaway OpenSSH server on 127.0.0.1 for the remote-training-service test (never touches /etc/ssh).

Everything lives in one temporary directory: host key, client key, authorized_keys, sshd_config,
PID file and log. The server runs in the foreground (``-D -e``) as a child of the test and is stopped
by its PID. Sessions get ``HOME`` inside that directory (``SetEnv``), so NNI's worker files
(``~/nni-experiments``) stay there too.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install -y openssh-server openssh-client"


def find_sshd() -> str | None:
    """The sshd binary (often outside a non-root PATH, in /usr/sbin), or None.

    ``NASLUNG_SSHD`` names another binary (a path that does not exist = no sshd: how the test of the
    skip/fail behaviour simulates a machine without OpenSSH).
    """
    override = os.environ.get("NASLUNG_SSHD")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)),
                                        None)


def missing_tools() -> list[str]:
    missing = [] if find_sshd() else ["sshd"]
    return missing + [t for t in ("ssh", "ssh-keygen") if shutil.which(t) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    client_key: Path
    home: Path
    known_hosts: Path
    log: Path
    proc: subprocess.Popen

    def ssh(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-i", str(self.client_key), "-p", str(self.port), "-o", "BatchMode=yes",
                               "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
                               "-o", f"UserKnownHostsFile={self.known_hosts}", f"{self.user}@127.0.0.1", command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL); its session children go with their connections."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_sshd(root: Path, timeout_s: float = 20.0) -> Sshd:
    """Start sshd on a free 127.0.0.1 port with keys made for it in ``root``; wait until a key login works."""
    sshd = find_sshd()
    if sshd is None:
        raise FileNotFoundError(f"sshd not found; install it with: {INSTALL_HINT}")
    root.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text(encoding="utf-8"))
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # As root, sshd insists on its privilege-separation directory (the distribution's service creates it).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = _free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
        f"SetEnv HOME={home}", "LogLevel VERBOSE", ""]))
    log = root / "sshd.log"
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    server = Sshd(root=root, port=port, user=getpass.getuser(), client_key=root / "client_key", home=home,
                  known_hosts=home / ".ssh" / "known_hosts", log=log, proc=proc)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with status {proc.returncode}: {log.read_text(encoding='utf-8')[-2000:]}")
        res = server.ssh("echo ok", timeout=10) if _listening(port) else None
        if res is not None and res.returncode == 0 and res.stdout.strip() == "ok":
            return server
        if time.monotonic() > deadline:
            server.stop()
            why = res.stderr if res is not None else "not listening"
            raise RuntimeError(f"sshd on 127.0.0.1:{port} did not accept a key login in {timeout_s:.0f} s: {why}\n"
                               f"{log.read_text(encoding='utf-8')[-2000:]}")
        time.sleep(0.3)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
