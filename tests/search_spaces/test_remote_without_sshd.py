"""Where OpenSSH is missing, the remote tests say so: skipped with the install command under a plain
pytest run (`make test-all`), failed under `make test-remote` (NASLUNG_REQUIRE_SSHD=1). Runs the
remote test module in a child pytest with sshd hidden (NASLUNG_SSHD pointing nowhere); starts no sshd."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.remote  # with the remote tests (make test-remote), not in make test: ~17 s of child pytest


def _run_remote_tests(tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NASLUNG_REQUIRE_SSHD"}
    env.update(NASLUNG_SSHD=str(tmp_path / "no-sshd-here"), **env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "remote", "-p", "no:cacheprovider",
                           str(HERE / "test_remote_search.py"), "-k", "sshd_fixture"],
                          cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_missing_sshd_skips_with_the_install_command(tmp_path):
    res = _run_remote_tests(tmp_path)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "1 skipped" in res.stdout
    assert "OpenSSH not installed (sshd missing); install it with: apt-get install -y openssh-server" in res.stdout


@pytest.mark.timeout(300)
def test_missing_sshd_fails_under_make_test_remote(tmp_path):
    res = _run_remote_tests(tmp_path, NASLUNG_REQUIRE_SSHD="1")
    assert res.returncode == 1, res.stdout[-2000:]
    assert "1 error" in res.stdout and "apt-get install -y openssh-server" in res.stdout  # the fixture fails
