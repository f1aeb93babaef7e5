"""The checked-in generated code is exactly what grpcio-tools makes from proto/ today."""
from __future__ import annotations

from pathlib import Path

from service import codegen
from service.generated import nodule_service_pb2 as pb


def test_generated_code_matches_proto():
    stale = codegen.check()
    assert stale == [], f"service/generated is stale for {stale}: run `python -m service.codegen`"


def test_check_detects_a_stale_file(tmp_path):
    out = tmp_path / "gen"
    codegen.generate(out)
    assert codegen.check(out) == []
    f = out / "nodule_service_pb2.py"
    f.write_text(f.read_text() + "\n# edited\n")
    assert codegen.check(out) == ["nodule_service_pb2.py"]


def test_descriptor_is_the_versioned_api():
    assert pb.DESCRIPTOR.package == "naslung.v1"
    svc = pb.DESCRIPTOR.services_by_name["NoduleService"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in svc.methods}
    assert methods == {"Predict": (False, False), "PredictStream": (True, True),
                       "Explain": (False, False), "GetModelInfo": (False, False)}
    generated = {p.name for p in Path(codegen.OUT_DIR).glob("*.py*")}
    assert {"nodule_service_pb2.py", "nodule_service_pb2_grpc.py", "nodule_service_pb2.pyi"} <= generated
