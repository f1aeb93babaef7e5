"""Service fixtures: a tiny real bundle (real save_bundle, untrained tiny models), a running server
on a free loopback port, a client, and helpers for crops and self-signed certificates."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from naslung.data.spec import CropSpec

from service_testutil import S


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from naslung.ensemble import BundleMember, save_bundle
    from naslung.models import build_model, get_config

    torch.manual_seed(0)
    cfg = get_config("tiny")
    members = [BundleMember(name=f"tiny-{i}", config=cfg, state_dict=build_model(cfg).state_dict(),
                            metrics={"val": {"auc": 0.5 + 0.1 * i}}) for i in range(2)]
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", members, CropSpec(size=S), rule="mean")


@pytest.fixture(scope="session")
def predictor(tiny_bundle):
    from service.predictor import load_predictor

    return load_predictor(tiny_bundle, "cpu", engine="naive")


@pytest.fixture
def start_server():
    """start_server(predictor, **config) -> (server, client); everything stopped at teardown."""
    from service.client import NoduleClient
    from service.server import NoduleServer, ServerConfig

    started = []

    def _start(pred, client_kw=None, **cfg):
        cfg.setdefault("port", 0)
        server = NoduleServer(pred, ServerConfig(**cfg))
        port = server.start()
        kw = dict(client_kw or {})
        target = kw.pop("target", f"127.0.0.1:{port}")
        client = NoduleClient(target, **kw)
        started.append((server, client))
        return server, client

    yield _start
    for server, client in started:
        client.close()
        server.stop(grace=0.5)


@pytest.fixture(scope="module")
def shared_server(tiny_bundle):
    """One server (with metrics) shared by the read-only integration tests of a module."""
    from service.client import NoduleClient
    from service.predictor import load_predictor
    from service.server import NoduleServer, ServerConfig

    server = NoduleServer(load_predictor(tiny_bundle, "cpu", engine="naive"),
                          ServerConfig(port=0, metrics_port=0, max_volume_voxels=64 ** 3,
                                       max_message_bytes=1 << 20))
    server.start()
    client = NoduleClient(f"127.0.0.1:{server.port}", timeout=20)
    yield server, client
    client.close()
    server.stop(grace=0.5)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (cryptography if installed, else openssl)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.pem", d / "server.key"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import ipaddress

        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
             .sign(k, hashes.SHA256()))
        cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available to make a test cert")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
    return cert, key
