"""TLS + bearer token: no token or a wrong one is UNAUTHENTICATED, health checks stay open."""
from __future__ import annotations

import grpc
import pytest

from service.auth import read_token
from service.client import NoduleClient, crop_request
from service_testutil import make_crop

TOKEN = "s3cret-token-123"


def _code(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, **kw)
    return ei.value.code(), ei.value.details()


def test_tls_and_token(start_server, predictor, tls_cert):
    cert, key = tls_cert
    server, client = start_server(predictor, client_kw={"root_cert": cert, "token": TOKEN, "timeout": 10},
                                  tls_cert=str(cert), tls_key=str(key), token=TOKEN)
    target = f"localhost:{server.port}"
    req = crop_request(make_crop(0))
    assert client.predict(req).model_version == predictor.version
    assert client.model_info().model_version == predictor.version
    with NoduleClient(target, root_cert=cert, timeout=10) as anon:
        code, details = _code(anon.predict, req)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details
        code, _ = _code(anon.model_info)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _code(lambda: list(anon.predict_stream([req])))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert anon.health() == "SERVING"  # probes need no secret
    with NoduleClient(target, root_cert=cert, token="wrong", timeout=10) as bad:
        code, details = _code(bad.predict, req)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid bearer token" in details
    with NoduleClient(target, token=TOKEN, timeout=3) as plaintext:  # no TLS against a TLS port
        code, _ = _code(plaintext.predict, req)
        assert code == grpc.StatusCode.UNAVAILABLE
    rejected = server.metrics.registry.get_sample_value(
        "naslung_requests_total", {"method": "Predict", "code": "UNAUTHENTICATED"})
    assert rejected == 2


def test_token_without_tls_on_loopback(start_server, predictor):
    server, client = start_server(predictor, client_kw={"token": TOKEN}, token=TOKEN)
    assert client.predict(crop_request(make_crop(1))).label_name in ("benign", "malignant")
    with NoduleClient(f"127.0.0.1:{server.port}", timeout=5) as anon:
        assert _code(anon.predict, crop_request(make_crop(1)))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_tls_needs_cert_and_key(predictor, tls_cert):
    from service.server import NoduleServer, ServerConfig

    with pytest.raises(ValueError, match="both a certificate and a key"):
        NoduleServer(predictor, ServerConfig(port=0, tls_cert=str(tls_cert[0])))


def test_read_token(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(f"  {TOKEN}\n")
    assert read_token(p) == TOKEN
    p.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(p)
    p.write_text("two words")
    with pytest.raises(ValueError, match="whitespace"):
        read_token(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_token(tmp_path / "missing")
