"""Helpers for the service tests (imported by name: tests/service is on sys.path under pytest)."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
S = 16  # tiny model input size


def make_crop(seed: int = 0, size: int = S, dtype=np.int16) -> np.ndarray:
    """A nodule-like HU crop: a bright ball on lung background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:size, :size, :size] - size // 2
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    hu = np.where(r < size * rng.uniform(0.1, 0.3), 40.0, -850.0) + rng.normal(0, 30, r.shape)
    return hu.astype(dtype)


class SlowPredictor:
    """Wraps a predictor: sleeps ``delay`` per batch and counts crops run (for queue/deadline tests)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.n_crops = 0
        self.started = threading.Event()
        for k in ("spec", "version", "member_names", "threshold", "lock", "explain_target"):
            setattr(self, k, getattr(inner, k))

    def info(self):
        return self.inner.info()

    def predict(self, crops):
        self.started.set()
        time.sleep(self.delay)
        self.n_crops += len(crops)
        return self.inner.predict(crops)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_serve_ready(proc, want_metrics: int = 1, timeout: float = 120) -> tuple[int | None, list[int], str]:
    """Read a `naslung serve` child's stdout until it printed its port and ``want_metrics`` metrics
    URLs: (port, metrics ports, the lines read)."""
    port, metrics, lines = None, [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (port is None or len(metrics) < want_metrics):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving naslung\.v1\.NoduleService on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
        m = re.search(r"^metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
        if m:
            metrics.append(int(m.group(1)))
    return port, metrics, "".join(lines)
