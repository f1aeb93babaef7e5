"""Issue 17: checks from outside, with nothing of ours on the client side.

* a reflection-only client (a separate Python process importing grpcio, grpcio-reflection and
  protobuf only -- no generated code, no naslung) discovers the API and calls Predict and Explain;
* a real ``naslung serve`` process whose CPU falls back to idle within a second of an abandoned,
  expensive Explain (it used to burn ~1.75 cores for seconds after the client gave up).
The idle-stream flood (health still SERVING) is in test_service_faults.py; kill -9 of one worker
under --procs 2 in test_service_procs.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from service_testutil import make_crop, read_serve_ready, subprocess_env

REFLECTION_CLIENT = textwrap.dedent('''
    import json, sys
    import grpc
    import numpy as np
    from google.protobuf import message_factory
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    target, crop_path = sys.argv[1], sys.argv[2]
    ch = grpc.insecure_channel(target)
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
    svc = pool.FindServiceByName("naslung.v1.NoduleService")
    methods = {m.name: m for m in svc.methods}

    def rpc(name, msg):
        m = methods[name]
        out = message_factory.GetMessageClass(m.output_type)
        return ch.unary_unary(f"/{svc.full_name}/{name}", request_serializer=lambda x: x.SerializeToString(),
                              response_deserializer=out.FromString)(msg, timeout=60)

    info = rpc("GetModelInfo", message_factory.GetMessageClass(methods["GetModelInfo"].input_type)())
    crop = np.load(crop_path)
    assert crop.shape == (info.input_spec.size,) * 3, (crop.shape, info.input_spec.size)
    int16 = pool.FindEnumTypeByName("naslung.v1.DType").values_by_name["DTYPE_INT16"].number
    Predict = message_factory.GetMessageClass(methods["Predict"].input_type)
    req = Predict(request_id="reflected")
    req.crop.voxels.shape.extend(crop.shape)
    req.crop.voxels.dtype = int16
    req.crop.voxels.data = crop.astype("<i2").tobytes()
    p = rpc("Predict", req)
    Explain = message_factory.GetMessageClass(methods["Explain"].input_type)
    ereq = Explain(methods=["cbam", "gradcam"])
    ereq.input.CopyFrom(req)
    e = rpc("Explain", ereq)
    maps = {m.method: (list(m.values.shape), len(m.values.data)) for m in e.maps}
    limits = {f.name: getattr(info.limits, f.name) for f in info.limits.DESCRIPTOR.fields}
    bad = {"naslung", "service", "service.generated", "torch"} & set(sys.modules)
    print(json.dumps({"id": p.request_id, "p": p.malignancy_probability, "members": len(p.members),
                      "version": p.model_version, "explain_p": e.prediction.malignancy_probability,
                      "maps": maps, "limits": limits, "imported_ours": sorted(bad)}))
''')


def test_reflection_only_client_calls_predict_and_explain(shared_server, predictor, tmp_path):
    server, _ = shared_server
    crop = make_crop(6)
    np.save(tmp_path / "crop.npy", crop)
    (tmp_path / "client.py").write_text(REFLECTION_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(tmp_path / "client.py"), f"127.0.0.1:{server.port}",
                          str(tmp_path / "crop.npy")], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = float(predictor.predict(crop[None].astype(np.float32)).proba[0, 1])
    assert got["imported_ours"] == []
    assert got["id"] == "reflected" and got["version"] == predictor.version and got["members"] == 2
    assert got["p"] == pytest.approx(want, abs=1e-6) and got["explain_p"] == pytest.approx(want, abs=1e-6)
    s = predictor.spec.size
    assert set(got["maps"]) == {"cbam", "gradcam"} and got["maps"]["gradcam"] == [[s, s, s], s ** 3 * 4]
    # every limit a client can run into is discoverable through reflection alone (issue 17 review)
    cfg = server.config
    assert got["limits"] == pytest.approx({
        "max_batch": cfg.max_batch, "max_delay_ms": cfg.max_delay_ms, "max_queue": cfg.max_queue,
        "max_message_bytes": cfg.max_message_bytes, "max_volume_voxels": cfg.max_volume_voxels,
        "predict_slots": cfg.workers, "explain_slots": cfg.explain_queue,
        "explain_concurrency": cfg.explain_concurrency, "stream_slots": cfg.stream_slots,
        "streams_per_client": cfg.streams_per_peer, "other_slots": cfg.other_slots,
        "stream_idle_s": cfg.stream_idle_s, "stream_window": cfg.stream_window, "max_call_s": cfg.max_call_s,
        "max_inflight_bytes": int(cfg.max_inflight_mb * 2**20), "request_memory_factor": cfg.request_memory_factor,
        "receive_slots": cfg.receive_slots, "stream_read_slots": cfg.stream_read_slots,
        "stream_read_hold_s": cfg.stream_read_hold_s, "explain_ig_steps": cfg.explain_cost.ig_steps,
        "explain_occlusion_passes": cfg.explain_cost.occlusion_positions(s), "explain_max_methods": 8})


def _cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_server_cpu_falls_back_within_a_second_of_an_abandoned_explain():
    from service.client import NoduleClient, crop_request

    # one untrained 32^3 member: ig + occlusion take ~40 s of two cores on the CPU box
    cmd = [sys.executable, "-m", "naslung", "serve", "--random-models", "model1", "--port", "0", "--engine", "naive",
           "--threads", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    try:
        port, _, log = read_serve_ready(proc, want_metrics=0)
        assert port, log
        with NoduleClient(f"127.0.0.1:{port}", timeout=60) as c:
            crop = make_crop(2, size=32)
            c.predict(crop_request(crop))  # warm: the first call pays for lazy set-up
            c.explain(crop_request(crop), methods=["cbam"])  # builds the explainer's model copy
            cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
            with pytest.raises(grpc.RpcError) as ei:
                c.explain(crop_request(crop), methods=["ig", "occlusion"], timeout=2.0)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            busy = _cpu_s(proc.pid) - cpu0
            time.sleep(max(0.0, t0 + 2.0 + 1.0 - time.monotonic()))  # one second after the deadline
            cpu1, t1 = _cpu_s(proc.pid), time.monotonic()
            time.sleep(2.0)
            after = (_cpu_s(proc.pid) - cpu1) / (time.monotonic() - t1)
            print(f"CPU before the deadline {busy:.2f} s; after: {after:.3f} cores")
            assert busy > 0.5, f"the explanation did not run before its deadline ({busy:.2f} s CPU)"
            assert after < 0.25, f"server still busy after the deadline: {after:.2f} cores"
            assert c.health() == "SERVING"
            assert c.explain(crop_request(crop), methods=["cbam"], timeout=60).maps  # the slot is free
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
