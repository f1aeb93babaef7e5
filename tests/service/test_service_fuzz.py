"""Fuzz: >= 1,000 malformed or random requests, each answered with a deliberate status; the server
stays healthy and keeps answering valid requests correctly afterwards."""
from __future__ import annotations

import math
import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.client import crop_request
from service.generated import nodule_service_pb2 as pb
from service_testutil import make_crop

# Statuses a malformed request may get. Never INTERNAL / UNKNOWN (a crash) or DEADLINE_EXCEEDED (a wedge).
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1.0, 0.5, 1e-300]))
dims = st.one_of(st.integers(0, 20), st.sampled_from([16, 64, 65, 1000, 2 ** 20, 2 ** 32 - 1]))


@st.composite
def arrays(draw):
    shape = draw(st.lists(dims, min_size=0, max_size=4))
    dtype = draw(st.one_of(st.sampled_from([0, 1, 2]), st.integers(-2 ** 31, 2 ** 31 - 1)))
    n = math.prod(shape) if shape else 0
    item = 4 if dtype == 2 else 2
    how = draw(st.sampled_from(["exact", "random", "floats"]))
    if how == "exact" and 0 < n * item <= 40_000:
        data = draw(st.binary(min_size=min(n * item, 64), max_size=min(n * item, 64)))
        data = (data * (n * item // max(len(data), 1) + 1))[: n * item] if data else b"\0" * (n * item)
    elif how == "floats" and 0 < n <= 10_000:
        vals = draw(st.lists(st.floats(width=32), min_size=1, max_size=8))
        data = b"".join(struct.pack("<f", v) for v in (vals * (n // len(vals) + 1))[:n])
    else:
        data = draw(st.binary(max_size=300))
    return pb.Array3D(shape=shape, dtype=dtype, data=data)


@st.composite
def requests(draw):
    req = pb.PredictRequest(request_id=draw(st.text(max_size=300)))
    kind = draw(st.sampled_from(["crop", "volume", "none", "valid"]))
    if kind == "valid":  # well-formed crops (some off-grid, so resampled) keep the OK path in the mix
        seed = draw(st.integers(0, 2 ** 16))
        size = draw(st.sampled_from([16, 16, 12, 20]))
        hu = np.random.default_rng(seed).integers(-1024, 3000, (size,) * 3, dtype=np.int16)
        spacing = draw(st.one_of(st.just([]), st.lists(st.floats(0.3, 3.0), min_size=3, max_size=3)))
        req.crop.CopyFrom(crop_request(hu, spacing).crop)
    elif kind == "crop":
        req.crop.spacing.extend(draw(st.lists(floats, max_size=4)))
        if draw(st.booleans()):
            req.crop.voxels.CopyFrom(draw(arrays()))
        else:
            req.crop.SetInParent()
    elif kind == "volume":
        v = req.volume
        v.spacing.extend(draw(st.lists(floats, max_size=4)))
        v.origin.extend(draw(st.lists(floats, max_size=4)))
        v.direction.extend(draw(st.one_of(st.lists(floats, max_size=10),
                                          st.just([1.0, 0, 0, 0, 1, 0, 0, 0, 1]))))
        if draw(st.booleans()):
            v.voxels.CopyFrom(draw(arrays()))
        else:
            v.SetInParent()
    if draw(st.booleans()):
        req.world.x, req.world.y, req.world.z = (draw(floats) for _ in range(3))
    return req


@pytest.fixture(scope="module")
def fuzz_target(shared_server):
    server, client = shared_server
    raw = client.channel.unary_unary("/naslung.v1.NoduleService/Predict",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
    seen = {"n": 0, "codes": {}}
    yield server, client, raw, seen
    # After the storm: still serving, still right.
    assert client.health() == "SERVING"
    crop = make_crop(9)
    r = client.predict(crop_request(crop))
    want = server.predictor.predict(crop[None].astype(np.float32)).proba[0, 1]
    assert r.malignancy_probability == pytest.approx(float(want), abs=1e-6)
    assert server.batcher.depth() == 0
    print("fuzz statuses:", seen)
    assert seen["n"] >= 1000 and seen["codes"].get("OK", 0) >= 50, seen


def _call(fn, arg, seen) -> grpc.StatusCode:
    try:
        fn(arg, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
        assert code in ALLOWED, (code, e.details())
        assert e.details(), "an error without a message"
    seen["n"] += 1
    seen["codes"][code.name] = seen["codes"].get(code.name, 0) + 1
    return code


@FUZZ
@given(req=requests())
def test_fuzz_structured_requests(fuzz_target, req):
    server, client, raw, seen = fuzz_target
    _call(client.stub.Predict, req, seen)


@settings(FUZZ, max_examples=300)
@given(blob=st.one_of(st.binary(max_size=2000), st.just(b""), st.just(b"\xff" * 50)))
def test_fuzz_raw_bytes(fuzz_target, blob):
    server, client, raw, seen = fuzz_target
    _call(raw, blob, seen)


@settings(FUZZ, max_examples=100)
@given(method=st.sampled_from(["Explain", "GetModelInfo"]), blob=st.binary(max_size=500))
def test_fuzz_raw_bytes_other_methods(fuzz_target, method, blob):
    server, client, raw, seen = fuzz_target
    call = client.channel.unary_unary(f"/naslung.v1.NoduleService/{method}",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
    _call(call, blob, seen)


@settings(FUZZ, max_examples=60)
@given(reqs=st.lists(requests(), min_size=1, max_size=5))
def test_fuzz_streams_answer_every_item(fuzz_target, reqs):
    server, client, raw, seen = fuzz_target
    out = list(client.stub.PredictStream(iter(reqs), timeout=30))
    assert [r.request_id for r in out] == [r.request_id for r in reqs]
    for r in out:
        if r.HasField("error"):
            assert r.error.code in {c.value[0] for c in ALLOWED} and r.error.message
    seen["n"] += len(reqs)
