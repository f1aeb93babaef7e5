"""Integration: the real server on a free loopback port, called through the real client."""
from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from service.client import array_from_proto, crop_request, volume_request
from service.generated import nodule_service_pb2 as pb
from service.server import SERVICE_NAME
from service_testutil import SlowPredictor, make_crop


def _code(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, **kw)
    return ei.value.code(), ei.value.details()


def test_predict_matches_the_bundle_and_reports_members(shared_server, predictor):
    server, client = shared_server
    crop = make_crop(7)
    r = client.predict(crop_request(crop, request_id="n-7"))
    want = predictor.predict(crop[None].astype(np.float32))
    assert r.request_id == "n-7"
    assert r.malignancy_probability == pytest.approx(float(want.proba[0, 1]), abs=1e-6)
    assert [m.name for m in r.members] == ["tiny-0", "tiny-1"]
    assert [m.malignancy_probability for m in r.members] == pytest.approx(want.member_proba[:, 0, 1].tolist(), abs=1e-6)
    assert r.label == int(r.malignancy_probability > 0.5) and r.label_name in ("benign", "malignant")
    assert r.model_version == predictor.version and len(r.model_version) == 12
    assert r.timing.batch_size >= 1 and r.timing.total_ms >= r.timing.inference_ms > 0


def test_predict_from_volume_and_world_coordinate(shared_server, predictor):
    from naslung.data.crop import crop_at_world
    from naslung.data.volume import image_from_array

    server, client = shared_server
    vol = np.random.default_rng(1).normal(-600, 250, (30, 40, 40)).astype(np.int16)
    spacing, origin, world = (0.8, 0.8, 1.5), (-20.0, -30.0, -200.0), (-5.0, -12.0, -180.0)
    r = client.predict_volume(vol, spacing, world, origin)
    crop = crop_at_world(image_from_array(vol, spacing, origin), world, predictor.spec)
    want = predictor.predict(crop[None].astype(np.float32)).proba[0, 1]
    assert r.malignancy_probability == pytest.approx(float(want), abs=1e-6)
    code, details = _code(client.predict_volume, vol, spacing, (500.0, 0.0, 0.0), origin)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside" in details


def test_predict_stream_answers_in_order_with_in_band_errors(shared_server):
    server, client = shared_server
    reqs = [crop_request(make_crop(i), request_id=f"r{i}") for i in range(6)]
    reqs.insert(3, pb.PredictRequest(request_id="broken"))
    out = list(client.predict_stream(reqs))
    assert [r.request_id for r in out] == [r.request_id for r in reqs]
    assert out[3].HasField("error") and out[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no input" in out[3].error.message
    single = client.predict(reqs[6])
    assert out[6].malignancy_probability == pytest.approx(single.malignancy_probability, abs=1e-6)
    assert not any(r.HasField("error") for i, r in enumerate(out) if i != 3)


def test_model_info(shared_server, predictor, tiny_bundle):
    import json

    server, client = shared_server
    info = client.model_info()
    assert info.model_version == predictor.version and info.api_version == "naslung.v1"
    assert [m.name for m in info.members] == ["tiny-0", "tiny-1"]
    assert info.members[1].metrics["val.auc"] == pytest.approx(0.6)
    assert json.loads(info.members[0].config_json)["stages"] == [[4], [8]]
    assert info.input_spec.size == 16 and info.input_spec.hu_min == -1000
    assert info.combination_rule == "mean"
    manifest = json.loads(info.manifest_json)
    assert manifest == json.loads((tiny_bundle / "manifest.json").read_text())
    assert info.limits.max_batch == 32 and info.limits.max_volume_voxels == 64 ** 3


def test_health_and_reflection(shared_server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    server, client = shared_server
    assert client.health() == "SERVING"
    assert client.health(SERVICE_NAME) == "SERVING"
    db = ProtoReflectionDescriptorDatabase(client.channel)
    services = set(db.get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    svc = DescriptorPool(db).FindServiceByName(SERVICE_NAME)
    assert {m.name for m in svc.methods} == {"Predict", "PredictStream", "Explain", "GetModelInfo"}
    assert svc.file.name == "naslung/v1/nodule_service.proto"


def test_validation_errors_reach_the_client(shared_server):
    server, client = shared_server
    bad = pb.PredictRequest(crop=pb.Crop(voxels=pb.Array3D(shape=[16, 16, 16], dtype=pb.DTYPE_INT16, data=b"12")))
    code, details = _code(client.predict, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 bytes" in details and "8,192" in details
    code, details = _code(client.predict, pb.PredictRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no input" in details
    big = np.zeros((65, 64, 64), np.int16)  # over max_volume_voxels=64^3 but under the 1 MiB message limit
    code, details = _code(client.predict_volume, big, (1, 1, 1), (1, 1, 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "266,240 voxels" in details


def test_message_over_transport_limit_is_resource_exhausted(shared_server):
    server, client = shared_server
    huge = np.zeros((90, 90, 90), np.int16)  # 1.46 MB of voxels > the 1 MiB message limit
    code, details = _code(client.predict_volume, huge, (1, 1, 1), (1, 1, 1))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.health() == "SERVING"


def test_metrics_endpoint_counts_codes_batches_and_latency(shared_server):
    server, client = shared_server
    client.predict(crop_request(make_crop(1)))
    with pytest.raises(grpc.RpcError):
        client.predict(pb.PredictRequest())
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'naslung_requests_total{code="OK",method="Predict"}' in text
    assert 'naslung_requests_total{code="INVALID_ARGUMENT",method="Predict"}' in text
    assert "naslung_batch_size_bucket" in text and 'naslung_request_latency_seconds_count{method="Predict"}' in text
    assert "naslung_queue_depth 0.0" in text
    ok = server.metrics.registry.get_sample_value("naslung_requests_total", {"method": "Predict", "code": "OK"})
    assert ok >= 1


def test_full_queue_answers_resource_exhausted(start_server, predictor):
    slow = SlowPredictor(predictor, delay=0.4)
    server, client = start_server(slow, max_batch=1, max_queue=1, max_delay_ms=0)
    results = []

    def call(i):
        try:
            client.predict(crop_request(make_crop(i)), timeout=10)
            results.append("OK")
        except grpc.RpcError as e:
            results.append(e.code().name)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(15)
    assert "RESOURCE_EXHAUSTED" in results and "OK" in results, results
    assert set(results) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert results.count("OK") == slow.n_crops


def test_expired_requests_are_dropped_not_run(start_server, predictor):
    slow = SlowPredictor(predictor, delay=0.6)
    server, client = start_server(slow, max_batch=1, max_delay_ms=0)
    first = threading.Thread(target=lambda: client.predict(crop_request(make_crop(0)), timeout=10))
    first.start()
    assert slow.started.wait(5)
    t0 = time.monotonic()
    code, _ = _code(client.predict, crop_request(make_crop(1)), timeout=0.15)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 2.0
    first.join(10)
    time.sleep(0.3)
    assert slow.n_crops == 1  # the expired request never reached the model
    assert client.health() == "SERVING"


def test_graceful_stop_drains_in_flight_requests(start_server, predictor):
    slow = SlowPredictor(predictor, delay=0.5)
    server, client = start_server(slow, max_batch=4, max_delay_ms=0)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("r", client.predict(crop_request(make_crop(3)), timeout=10)))
    t.start()
    assert slow.started.wait(5)
    server.stop(grace=5)  # blocks until drained
    t.join(5)
    assert got["r"].malignancy_probability > 0 and slow.n_crops == 1
    code, _ = _code(client.predict, crop_request(make_crop(4)), timeout=2)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_explain_returns_maps_png_and_crop(shared_server):
    import naslung.explain.core  # noqa: F401  (part of the project: an import error must fail, not skip)
    server, client = shared_server
    crop = make_crop(5)
    e = client.explain(crop_request(crop, request_id="e1"), methods=["cbam", "gradcam"], include_png=True,
                       include_crop=True)
    assert e.prediction.request_id == "e1" and 0 <= e.prediction.malignancy_probability <= 1
    methods = {m.method for m in e.maps}
    assert methods == {"cbam", "gradcam"}
    for m in e.maps:
        v = array_from_proto(m.values)
        assert v.shape == (16, 16, 16) and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1
        assert list(m.spacing) == [1.0, 1.0, 1.0] and m.png.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(array_from_proto(e.crop), crop.astype(np.float32))
    code, details = _code(client.explain, crop_request(crop), methods=["telepathy"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "telepathy" in details
    # an explanation leaves predictions untouched (it runs on its own copy of the models)
    a = client.predict(crop_request(crop)).malignancy_probability
    assert a == pytest.approx(e.prediction.malignancy_probability, abs=1e-6)


def test_server_runs_without_optional_packages(monkeypatch, start_server, predictor, caplog):
    """A bare load-test box has grpcio but not the health, reflection or prometheus packages."""
    import sys

    for mod in ("grpc_health", "grpc_health.v1", "grpc_reflection", "grpc_reflection.v1alpha", "prometheus_client"):
        monkeypatch.setitem(sys.modules, mod, None)  # import of these now raises ImportError
    with caplog.at_level("WARNING", logger="service"):
        server, client = start_server(predictor, metrics_port=0)
    assert server.health is None and server.reflection is False and not server.metrics.enabled
    assert server.metrics_port is None
    assert "grpcio-health-checking is not installed" in caplog.text
    assert "prometheus-client is not installed" in caplog.text
    assert client.predict(crop_request(make_crop(2))).model_version == predictor.version


def test_long_stream_keeps_order_past_the_window(shared_server):
    """More items than the per-stream window (32): flow control, not loss or reordering."""
    server, client = shared_server
    crops = [make_crop(i % 5) for i in range(5)]
    want = [client.predict(crop_request(c)).malignancy_probability for c in crops]
    out = list(client.predict_stream(crop_request(crops[i % 5], request_id=str(i)) for i in range(100)))
    assert [r.request_id for r in out] == [str(i) for i in range(100)]
    assert [r.malignancy_probability for r in out] == pytest.approx([want[i % 5] for i in range(100)], abs=1e-6)
    ok = server.metrics.registry.get_sample_value("naslung_requests_total", {"method": "PredictStreamItem", "code": "OK"})
    assert ok >= 100
