"""deploy/k8s/serve/ and deploy/docker/: schema-valid manifests that match what `naslung serve` really takes.

The manifests are validated offline against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate (strict: unknown fields fail), for the oldest and the newest Kubernetes versions
we claim. Then they are checked against the code: the container's arguments parse with the real
`naslung serve` parser, the gRPC probes point at the plaintext --health-port and the health
service's real name, the TLS and token paths sit in the mounted Secrets, the memory limit covers
the server's own memory bound, and the Dockerfiles copy files that exist and run commands the CLI has.
No image is built and no cluster is contacted here (docs/scale-out.md says what was not run).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "deploy" / "k8s" / "serve"
K8S_VERSIONS = ("1.27.0", "1.37.0")  # gRPC probes are GA from 1.27
IDLE_RSS_MIB = 330  # docs/service.md: idle server RSS 321-339 MiB (5 members, CPU)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(SERVE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # a kustomize file, not a Kubernetes object
        out += [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d) for d in _docs(path)]
    return out


def _deployment() -> dict:
    (d,) = _docs(SERVE / "deployment.yaml")
    return d


def _container() -> dict:
    (c,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return c


def _serve_args():
    from naslung.cli.main import build_parser

    return build_parser().parse_args(_container()["args"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,doc", _manifests(), ids=[n for n, _ in _manifests()])
def test_manifest_is_schema_valid(name, doc, version):
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    """The schema test can fail: a misspelt probe field and a string where an integer belongs."""
    import copy

    import kubernetes_validate

    bad = copy.deepcopy(_deployment())
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50052
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(_deployment())
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((SERVE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kust["resources"]) == sorted(p.name for p in SERVE.glob("*.yaml") if p.name != "kustomization.yaml")


def test_container_args_are_real_serve_flags_and_expose_safely():
    from service.server import ServerConfig, check_exposure

    args = _serve_args()  # argparse exits on an unknown flag
    assert args.command == "serve"
    assert args.host == "0.0.0.0" and args.tls_cert and args.tls_key and args.token_file
    check_exposure(ServerConfig(host=args.host, tls_cert=args.tls_cert, tls_key=args.tls_key, token="x"))
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert ports == {"grpc": args.port, "grpc-health": args.health_port}


def test_probes_use_the_plaintext_health_port_and_the_real_service_name():
    from service.server import SERVICE_NAME

    args, c = _serve_args(), _container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == args.health_port, probe  # not the TLS port: kubelet dials plaintext
    assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME == "naslung.v1.NoduleService"
    assert c["livenessProbe"]["grpc"].get("service", "") == ""  # the server's overall status


def test_tls_and_token_come_from_the_mounted_secrets():
    args, c = _serve_args(), _container()
    spec = _deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

    def secret_key(path: str) -> tuple[str, str]:
        directory, key = path.rsplit("/", 1)
        mount = mounts[directory]
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        return secret["secretName"], items.get(key, key)

    assert secret_key(args.tls_cert) == ("naslung-tls", "tls.crt")  # a kubernetes.io/tls Secret's keys
    assert secret_key(args.tls_key) == ("naslung-tls", "tls.key")
    assert secret_key(args.token_file) == ("naslung-token", "token")
    doc = (ROOT / "docs" / "scale-out.md").read_text(encoding="utf-8")  # the commands that create exactly these Secrets
    assert "kubectl create secret tls naslung-tls --cert=" in doc
    assert "kubectl create secret generic naslung-token --from-file=token=" in doc


def test_resources_cover_the_servers_memory_bound_and_the_drain():
    args, c = _serve_args(), _container()
    bound_mib = IDLE_RSS_MIB + args.max_inflight_mb + 2 * args.max_message_mb  # docs/service.md: Memory

    def mib(q: str) -> float:
        m = re.fullmatch(r"(\d+)(Mi|Gi)", q)
        return float(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)

    assert mib(c["resources"]["limits"]["memory"]) >= bound_mib * 1.1  # allocator slack (measured +58 MiB)
    assert mib(c["resources"]["requests"]["memory"]) >= bound_mib
    assert float(c["resources"]["requests"]["cpu"]) == args.threads  # torch threads = the CPUs asked for
    spec = _deployment()["spec"]["template"]["spec"]
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > args.grace_s + pre_stop


def test_services_select_the_deployments_pods_on_the_grpc_port():
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    services = _docs(SERVE / "service.yaml")
    assert {s["metadata"]["name"] for s in services} == {"naslung-serve", "naslung-serve-headless"}
    for s in services:
        assert s["spec"]["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in s["spec"]["ports"]] == ["grpc"]
    for name in ("pdb.yaml", "hpa.yaml"):
        (d,) = _docs(SERVE / name)
        target = d["spec"].get("selector", {}).get("matchLabels") or {}
        ref = d["spec"].get("scaleTargetRef", {}).get("name")
        assert target.items() <= labels.items() and (ref in (None, "naslung-serve"))


# ----------------------------------------------------------------------------- Dockerfiles
def _dockerfile(name: str) -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "docker" / name).read_text(encoding="utf-8").replace("\\\n", " ")
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["serve.Dockerfile", "trial.Dockerfile"])
def test_dockerfile_copies_what_exists_and_pins_the_cpu_torch(name):
    instructions = _dockerfile(name)
    for op, arg in instructions:
        if op == "COPY":
            *sources, _ = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
    torch_pin = next(l for l in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines() if l.startswith("torch=="))
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert torch_pin in runs
    assert "download.pytorch.org/whl/cpu" in (ROOT / "deploy" / "docker" / name).read_text(encoding="utf-8")
    assert runs.index(torch_pin) < runs.index("requirements"), "torch must be installed first, alone"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".venv" in ignored and "runs" in ignored and ".git" in ignored


def test_serve_image_command_is_a_real_serve_command():
    import json

    from naslung.cli.main import build_parser

    instructions = dict(_dockerfile("serve.Dockerfile"))  # ENTRYPOINT, CMD, EXPOSE and USER appear once
    entry, cmd = json.loads(instructions["ENTRYPOINT"]), json.loads(instructions["CMD"])
    assert entry == ["naslung"]
    args = build_parser().parse_args(cmd)
    assert (args.host, args.port, args.health_port) == ("0.0.0.0", 50051, 50052)
    assert set(instructions["EXPOSE"].split()) == {"50051", "50052"}
    assert instructions["USER"].split(":")[0] == str(_deployment()["spec"]["template"]["spec"]["securityContext"]
                                                    ["runAsUser"])
    assert _container()["args"][0] == "serve"  # the manifest's args replace CMD, after the same ENTRYPOINT
