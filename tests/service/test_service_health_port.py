"""`--health-port`: plaintext grpc.health.v1 alone, for Kubernetes' gRPC probes (they cannot do TLS).

The main port keeps TLS and the token; the health port answers health checks only, with the main
server's state, and nothing else (no predictions, no reflection).
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import crop_request
from service_testutil import make_crop, subprocess_env

TOKEN = "s3cret-token-123"


def _health(port: int, service: str = "", timeout: float = 5.0) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def test_plaintext_health_port_next_to_a_tls_and_token_server(start_server, predictor, tls_cert):
    cert, key = tls_cert
    server, _ = start_server(predictor, client_kw={"root_cert": cert, "token": TOKEN, "timeout": 10},
                                  tls_cert=str(cert), tls_key=str(key), token=TOKEN, health_port=0)
    hport = server.health_port
    assert hport and hport != server.port
    assert _health(hport) == "SERVING"
    assert _health(hport, "naslung.v1.NoduleService") == "SERVING"
    with pytest.raises(grpc.RpcError) as e:  # what a plaintext probe against the TLS port gets
        _health(server.port, timeout=3)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(f"127.0.0.1:{hport}") as ch:  # the health port serves nothing else
        predict = ch.unary_unary("/naslung.v1.NoduleService/Predict", request_serializer=None,
                                 response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            predict(crop_request(make_crop(0)).SerializeToString(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # shared state: what the main port says
    assert _health(hport) == "NOT_SERVING"
    server.stop(grace=0.5)
    with pytest.raises(grpc.RpcError) as e:
        _health(hport, timeout=2)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_no_health_port_unless_asked(start_server, predictor):
    server, client = start_server(predictor)
    assert server.health_port is None and server.health_server is None
    assert client.health() == "SERVING"


def test_cli_health_port_with_two_processes(tiny_bundle):
    """`naslung serve --procs 2 --health-port 0`: one shared health port, answered by the group."""
    cmd = [sys.executable, "-m", "naslung", "serve", "--bundle", str(tiny_bundle), "--port", "0", "--procs", "2",
           "--engine", "naive", "--threads", "1", "--health-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    try:
        lines, hport = [], None
        deadline = time.monotonic() + 120
        while hport is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"health \(grpc\.health\.v1 only, plaintext\) on 127\.0\.0\.1:(\d+)", line)
            hport = int(m.group(1)) if m else None
        assert hport, "".join(lines)
        assert {_health(hport) for _ in range(6)} == {"SERVING"}
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_a_health_port_equal_to_the_port(capsys):
    from naslung.cli.main import main

    rc = main(["serve", "--random-models", "tiny", "--port", "50051", "--health-port", "50051"])
    assert rc == 1
    assert "--health-port must be 0..65535 and differ from --port" in capsys.readouterr().err
