"""`naslung serve` as a real process (SIGTERM drains) and `naslung predict` against a server."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from naslung.cli.main import main
from service.client import NoduleClient, crop_request
from service_testutil import make_crop, read_serve_ready, subprocess_env


def test_predict_cli_crop_stack_and_volume(start_server, predictor, tmp_path, capsys):
    import SimpleITK as sitk

    server, client = start_server(predictor)
    target = f"127.0.0.1:{server.port}"
    crop = make_crop(3)
    np.save(tmp_path / "crop.npy", crop)
    assert main(["predict", "--server", target, "--input", str(tmp_path / "crop.npy")]) == 0
    out = capsys.readouterr().out
    p = client.predict(crop_request(crop)).malignancy_probability
    assert re.search(rf"crop\.npy\s+{p:.4f}\s+(benign|malignant)", out), out

    stack = np.stack([make_crop(i) for i in range(4)])
    np.save(tmp_path / "crops.npy", stack)
    assert main(["predict", "--server", target, "--input", str(tmp_path / "crops.npy")]) == 0
    out = capsys.readouterr().out
    for i in range(4):
        pi = client.predict(crop_request(stack[i])).malignancy_probability
        assert re.search(rf"crops\.npy\[{i}\]\s+{pi:.4f}", out), out

    vol = np.random.default_rng(0).normal(-600, 200, (24, 30, 30)).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.9, 0.9, 1.2))
    img.SetOrigin((-10.0, -20.0, -50.0))
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))
    world = (2.0, -8.0, -40.0)
    argv = ["predict", "--server", target, "--input", str(tmp_path / "scan.nii.gz"), "--world", *map(str, world)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    pv = client.predict_volume(vol, (0.9, 0.9, 1.2), world, (-10.0, -20.0, -50.0)).malignancy_probability
    assert f"{pv:.4f}" in out

    sitk.WriteImage(img, str(tmp_path / "scan.mhd"))  # MetaImage (.mhd + .raw) reads the same
    assert main(["predict", "--server", target, "--input", str(tmp_path / "scan.mhd"), "--world", *map(str, world)]) == 0
    assert f"{pv:.4f}" in capsys.readouterr().out

    assert main(argv[:-4]) == 1  # a volume without --world
    assert "--world" in capsys.readouterr().err


def test_predict_cli_explain_writes_maps(start_server, predictor, tmp_path, capsys):
    import naslung.explain.core  # noqa: F401  (part of the project: an import error must fail, not skip)
    server, _ = start_server(predictor)
    np.save(tmp_path / "crop.npy", make_crop(5))
    out_dir = tmp_path / "expl"
    rc = main(["predict", "--server", f"127.0.0.1:{server.port}", "--input", str(tmp_path / "crop.npy"),
               "--explain", "--methods", "gradcam", "--out", str(out_dir)])
    assert rc == 0, capsys.readouterr()
    files = {p.name for p in out_dir.iterdir()}
    assert {"predictions.json", "crop_hu.npy"} <= files
    assert any(f.startswith("gradcam") and f.endswith(".png") for f in files)
    maps = [np.load(out_dir / f) for f in files if f.startswith("gradcam") and f.endswith(".npy")]
    assert maps and maps[0].shape == (16, 16, 16)


def test_predict_cli_explain_volume_writes_world_aligned_nifti(start_server, predictor, tmp_path, capsys):
    import naslung.explain.core  # noqa: F401  (part of the project: an import error must fail, not skip)
    import SimpleITK as sitk

    server, _ = start_server(predictor)
    img = sitk.GetImageFromArray(np.random.default_rng(2).normal(-600, 200, (20, 24, 24)).astype(np.int16))
    img.SetSpacing((1.0, 1.0, 1.5))
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))
    out_dir = tmp_path / "expl"
    rc = main(["predict", "--server", f"127.0.0.1:{server.port}", "--input", str(tmp_path / "scan.nii.gz"),
               "--world", "12", "11", "15", "--explain", "--methods", "cbam", "--out", str(out_dir)])
    assert rc == 0, capsys.readouterr()
    niftis = sorted(out_dir.glob("cbam*.nii.gz"))
    assert niftis
    m = sitk.ReadImage(str(niftis[0]))
    assert m.GetSize() == (16, 16, 16)
    np.testing.assert_allclose(m.GetOrigin(), (12 - 8, 11 - 8, 15 - 8))  # voxel S//2 sits on the world point


def test_serve_process_drains_on_sigterm(tiny_bundle):
    cmd = [sys.executable, "-m", "naslung", "serve", "--bundle", str(tiny_bundle), "--port", "0",
           "--max-batch", "64", "--max-delay-ms", "3000", "--engine", "naive", "--threads", "1", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    try:
        port, metrics, log = read_serve_ready(proc, want_metrics=1, timeout=60)
        metrics_port = metrics[0] if metrics else None
        assert port and metrics_port, log
        client = NoduleClient(f"127.0.0.1:{port}", timeout=20)
        got = {}

        def call():
            try:
                got["r"] = client.predict(crop_request(make_crop(1)))
            except grpc.RpcError as e:
                got["err"] = e.code()

        t = threading.Thread(target=call)
        t.start()
        # SIGTERM once the request waits in the batch queue (it stays there up to the 3 s max delay)
        queued = False
        for _ in range(200):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            if "naslung_queue_depth 1.0" in text:
                queued = True
                break
            time.sleep(0.05)
        assert queued, "the request never reached the batch queue"
        proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert "r" in got, got  # the in-flight request was answered, not dropped
        rest, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, rest
        assert "received SIGTERM: draining" in rest and rest.rstrip().endswith("stopped")
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
