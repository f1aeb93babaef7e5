"""`naslung serve --procs N`: several processes on one port (SO_REUSEPORT), each answering; SIGTERM
drains them all; a child that cannot load its bundle stops the group with an error."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from service.client import crop_request
from service.generated import nodule_service_pb2 as pb
from service_testutil import make_crop, read_serve_ready, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT load spreading is Linux's")


def _served(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'naslung_requests_total\{code="OK",method="Predict"\} ([0-9.e+]+)', text))


def test_two_processes_share_a_port_and_drain(tiny_bundle):
    cmd = [sys.executable, "-m", "naslung", "serve", "--bundle", str(tiny_bundle), "--port", "0", "--procs", "2",
           "--engine", "naive", "--threads", "1", "--metrics-port", "0", "--max-delay-ms", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    try:
        port, metrics, log = read_serve_ready(proc, want_metrics=2)
        assert port and len(set(metrics)) == 2, log
        assert "2 processes" in log
        req = crop_request(make_crop(1)).SerializeToString()
        probs = set()
        # separate TCP connections (no shared subchannel), so the kernel spreads them over both processes
        for _ in range(24):
            ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            call = ch.unary_unary("/naslung.v1.NoduleService/Predict", request_serializer=None,
                                  response_deserializer=pb.PredictResponse.FromString)
            probs.add(round(call(req, timeout=30).malignancy_probability, 6))
            ch.close()
        assert len(probs) == 1  # the same bundle everywhere: the same answer from either process
        counts = [_served(m) for m in metrics]
        assert sum(counts) == 24 and all(c > 0 for c in counts), counts
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "draining 2 server processes" in rest and rest.rstrip().endswith("stopped"), rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_child_that_cannot_load_stops_the_group(tmp_path):
    missing = tmp_path / "no-bundle"
    cmd = [sys.executable, "-m", "naslung", "serve", "--bundle", str(missing), "--port", "0", "--procs", "2",
           "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failed to start" in out.stderr and str(missing) in out.stderr, out.stderr


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_children_drain_when_the_supervisor_is_killed(tiny_bundle):
    import os

    cmd = [sys.executable, "-m", "naslung", "serve", "--bundle", str(tiny_bundle), "--port", "0", "--procs", "2",
           "--engine", "naive", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    try:
        port, _, log = read_serve_ready(proc, want_metrics=0)
        assert port, log
        # the spawned servers (multiprocessing may add a resource-tracker child: keep the naslung ones)
        servers = [c for c in _children(proc.pid)
                   if b"naslung" in Path(f"/proc/{c}/cmdline").read_bytes() or
                   b"multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(servers) >= 2, servers
        proc.kill()  # SIGKILL: the supervisor cannot forward anything
        proc.wait()
        deadline = time.monotonic() + 30
        alive = servers
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [c for c in alive if os.path.exists(f"/proc/{c}") and
                     Path(f"/proc/{c}/stat").read_text().split()[2] != "Z"]
        assert not alive, f"server processes {alive} outlived their supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _spawned(pid: int) -> list[int]:
    out = []
    for c in _children(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
            stat = Path(f"/proc/{c}/stat").read_text().split()
        except OSError:
            continue
        if b"multiprocessing.spawn" in cmd and stat[2] != "Z":
            out.append(c)
    return out


def test_a_worker_killed_with_sigkill_is_restarted_while_the_port_answers(tiny_bundle):
    """Issue 17 item 3: kill -9 of one of two workers is not an outage. The other keeps answering
    new connections (health SERVING), the supervisor restarts the dead one, SIGTERM still drains."""
    import os

    cmd = [sys.executable, "-m", "naslung", "serve", "--bundle", str(tiny_bundle), "--port", "0", "--procs", "2",
           "--engine", "naive", "--threads", "1", "--max-delay-ms", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    try:
        port, _, log = read_serve_ready(proc, want_metrics=0)
        assert port, log
        before = _spawned(proc.pid)
        assert len(before) == 2, before
        os.kill(before[0], signal.SIGKILL)
        t_kill = time.monotonic()
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        req = crop_request(make_crop(1)).SerializeToString()
        t_end = time.monotonic() + 90
        answered, replaced, t_replaced, failures = 0, [], None, []
        # until the replacement has been up a while: calls on fresh connections all the time
        while time.monotonic() < t_end and (t_replaced is None or time.monotonic() < t_replaced + 8):
            ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            try:
                call = ch.unary_unary("/naslung.v1.NoduleService/Predict", request_serializer=None,
                                      response_deserializer=pb.PredictResponse.FromString)
                assert 0 <= call(req, timeout=30).malignancy_probability <= 1
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                answered += 1
            except grpc.RpcError as e:
                # a connection the kernel queued on the dying worker's socket is reset while the
                # process is torn down; a client retries it. Only that instant is allowed to fail.
                failures.append((round(time.monotonic() - t_kill, 2), e.code().name, e.details()[:100]))
            finally:
                ch.close()
            if not replaced:
                replaced = [c for c in _spawned(proc.pid) if c not in before]
                t_replaced = time.monotonic() if replaced else None
            time.sleep(0.1)
        assert all(t < 1.0 and code == "UNAVAILABLE" for t, code, _ in failures), failures
        assert answered >= 12, answered
        assert replaced, "the killed worker was not restarted"
        assert proc.poll() is None, "the supervisor exited after one worker died"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "restarting it" in rest and "restart(s)" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
