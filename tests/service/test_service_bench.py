"""bench/service.py runs end to end at toy scale and writes the numbers it prints."""
from __future__ import annotations

import json
import subprocess
import sys

from service_testutil import REPO, subprocess_env


def test_bench_service_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "bench" / "service.py"), "--models", "tiny", "--concurrency", "1,3",
           "--duration", "1", "--warmup", "0.3", "--threads", "1", "--max-batch", "4", "--precision", "bf16",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["server"]["members"] == 1 and res["server"]["crop_size"] == 16
    assert res["server"]["dtype"] == "bfloat16"  # --precision reaches the server process
    assert res["machine"]["cpus"] >= 1 and res["server_exit_code"] == 0  # drained on SIGTERM
    assert [r["concurrency"] for r in res["levels"]] == [1, 3]
    for r in res["levels"]:
        assert r["ok"] > 0 and r["errors"] == {}
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["throughput_per_s"] == r["ok"] / r["duration_s"]
        assert r["server_rss_mb"] > 50 and r["server_peak_rss_mb"] >= r["server_rss_mb"]
    assert "pred/s" in proc.stdout and "p99 ms" in proc.stdout
