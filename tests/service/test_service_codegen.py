"""The checked-in generated code is exactly what grpcio-tools makes from proto/ today."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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


def test_server_limits_grew_without_renumbering():
    """naslung.v1 stays wire-compatible: the first five ServerLimits fields keep their numbers and
    types, and a message written by an old server (fields 1-5 only) still parses."""
    from google.protobuf.descriptor import FieldDescriptor as F

    fields = {f.name: (f.number, f.type) for f in pb.ServerLimits.DESCRIPTOR.fields}
    assert {k: fields[k] for k in ("max_batch", "max_delay_ms", "max_queue", "max_message_bytes",
                                   "max_volume_voxels")} == {
        "max_batch": (1, F.TYPE_UINT32), "max_delay_ms": (2, F.TYPE_FLOAT), "max_queue": (3, F.TYPE_UINT32),
        "max_message_bytes": (4, F.TYPE_UINT64), "max_volume_voxels": (5, F.TYPE_UINT64)}
    assert sorted(n for n, _ in fields.values()) == list(range(1, len(fields) + 1))  # no gaps, no reuse
    # fields 1-5 as an old server encodes them: tag bytes written by hand
    old = bytes([0x08, 32, 0x15]) + np.float32(2.0).tobytes() + bytes([0x18, 0x80, 0x02, 0x20, 5, 0x28, 7])
    m = pb.ServerLimits.FromString(old)
    assert (m.max_batch, m.max_delay_ms, m.max_queue, m.max_message_bytes, m.max_volume_voxels) == (32, 2.0, 256, 5, 7)
    assert m.max_inflight_bytes == 0 and m.stream_read_slots == 0  # absent in an old server's answer
