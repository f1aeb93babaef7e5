"""`naslung demo` end to end on a few embedded crops: every stage directory, a loadable bundle, sane metrics."""
from __future__ import annotations

import json
import math

import pytest

from naslung.cli.main import main


def _check_common(out, capsys_text: str) -> dict:
    from naslung.data.dataset import PreparedDataset
    from naslung.ensemble import load_bundle

    for name in ("dataset.json", "manifest.csv", "crops.npy"):
        assert (out / "data" / name).is_file(), name
    ds = PreparedDataset.load(out / "data")
    assert len(ds) == 100 and set(ds.labels.tolist()) == {0, 1}

    ens = load_bundle(out / "bundle")  # verifies every weight's SHA-256
    assert len(ens) == 2 and ens.spec.size == ds.spec.size

    metrics = json.loads((out / "evaluate.json").read_text())
    assert metrics["n"] == int((ds.folds == 0).sum()) > 0
    for k in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        assert metrics[k] is None or (0.0 <= metrics[k] <= 1.0 and not math.isnan(metrics[k])), k

    ex = out / "explain"
    assert (ex / "overview.png").is_file() and (ex / "viewer.html").is_file()
    assert list((ex / "nifti").glob("*.nii.gz"))
    record = json.loads((ex / "explanation.json").read_text())
    methods = {m["method"] for m in record["maps"]}
    assert {"cbam", "gradcam", "ig"} <= methods and "occlusion" not in methods
    crop_files = list(ex.glob("*.npy"))
    assert len(crop_files) == 1
    crop_id = crop_files[0].stem
    assert ds.labels[list(ds.ids).index(crop_id)] == 1 and ds.folds[list(ds.ids).index(crop_id)] == 0

    summary = json.loads((out / "demo.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["prepare", "search", "ensemble", "evaluate", "serve",
                                                        "explain"]
    assert summary["evaluate"] == metrics
    for stage in ("prepare", "ensemble", "evaluate", "explain"):
        assert stage in capsys_text
    assert f"naslung serve --bundle {out / 'bundle'}" in capsys_text
    assert "not results" in capsys_text
    return summary


@pytest.mark.slow  # ~50 s; the journey test below covers every stage and more (make test-slow runs this)
def test_demo_no_search(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "100", "--epochs", "1", "--no-search", "--no-serve"]) == 0
    text = capsys.readouterr().out
    summary = _check_common(out, text)
    assert not (out / "search").exists()
    assert summary["stages"][1]["out"] == "-"

    # A rerun replaces its own stage directories and gives the same bundle (seeded).
    version = json.loads((out / "bundle" / "manifest.json").read_text())["version"]
    assert main(["demo", "--out", str(out), "--limit", "100", "--epochs", "1", "--no-search", "--no-serve"]) == 0
    assert json.loads((out / "bundle" / "manifest.json").read_text())["version"] == version


def test_demo_refuses_foreign_directory(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--limit", "100", "--no-search"]) == 1
    assert "not a demo directory" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_search_config_is_valid_and_capped(tmp_path):
    from naslung.cli.demo import DEMO_SPACE, write_search_config
    from search_spaces.experiment import SearchConfig

    path = tmp_path / "s.yml"
    write_search_config(path, trials=3, epochs=2, seed=7, top_k=2)
    cfg = SearchConfig.from_file(path)
    assert cfg.experiment.max_trials == 3 and cfg.experiment.gpus is None and cfg.top_k == 2
    assert cfg.space["widths"] == DEMO_SPACE["widths"] and cfg.trial["train"]["epochs"] == 2
    assert cfg.strategy.seed == 7 and cfg.trial["device"] == "cpu"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (other than this one) that mention ``text``: leftovers."""
    import os
    from pathlib import Path

    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(d.name) != os.getpid():
            found.append(cmd)
    return found


@pytest.mark.timeout(420)
def test_demo_with_search_server_and_client(tmp_path, capsys):
    """The whole journey at the smallest size: a real NNI search (manager + 2 one-epoch trials on 100 crops,
    a line per trial and per epoch), ensemble, evaluate, `naslung serve` as a child process called by the
    client with a crop and with a volume + world coordinate (maps over gRPC), explain; nothing left running."""
    import os

    out = tmp_path / "demo"
    no_voi = tmp_path / "no-voi"  # CI may lack the real data: the client then sends the crop as a NIfTI volume
    assert main(["demo", "--out", str(out), "--limit", "100", "--epochs", "1", "--search-trials", "2",
                 "--voi-dir", str(no_voi)]) == 0
    text = capsys.readouterr().out
    summary = _check_common(out, text)
    assert (out / "search" / "summary.json").is_file() and (out / "search" / "trials.csv").is_file()
    assert json.loads((out / "search" / "summary.json").read_text())["succeeded"] >= 1
    assert "listens on ALL network interfaces" in text and "web UI http://localhost:" in text
    assert "epoch 1/1  train loss" in text and "training 1 epoch(s)" in text      # live lines per epoch
    assert "[  1/2] SUCCEEDED" in text or "[  1/2] FAILED" in text                  # and per trial
    assert "\x1b[" not in text and "FOREVER" not in text and "stop --all" not in text
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert "trial-" in json.dumps(manifest["members"])
    assert summary["stages"][1]["out"] == str(out / "search")

    # stage 5: server + client
    serve = out / "serve"
    crop_pred = json.loads((serve / "crop" / "predictions.json").read_text())
    voi_pred = json.loads((serve / "voi" / "predictions.json").read_text())
    assert len(crop_pred) == 1 and 0.0 <= crop_pred[0].get("malignancy_probability", 0.0) <= 1.0
    assert voi_pred[0]["model_version"] == manifest["version"]
    assert {p.suffix for p in (serve / "voi_maps").iterdir()} >= {".png", ".npy", ".gz"}
    assert list((serve / "voi_maps").glob("cbam_*.nii.gz")) and list((serve / "voi_maps").glob("gradcam*.png"))
    info = summary["serve"]
    assert info["server_exit_status"] == 0 and info["real_voi"] is False
    assert "serving naslung.v1.NoduleService on 127.0.0.1:" in (serve / "server.log").read_text()
    assert f"--world {' '.join(f'{v:.2f}' for v in info['world'])}" in text
    with pytest.raises(ProcessLookupError):
        os.kill(info["server_pid"], 0)
    assert _processes_mentioning(str(out)) == []  # no server, NNI manager or trial left behind


def test_demo_finds_a_real_voi_and_its_world_coordinate(tmp_path):
    from naslung.cli.demo import PREFERRED_VOI, find_voi

    assert find_voi(tmp_path) is None
    (tmp_path / "images").mkdir()
    for name in ("LIDC-IDRI-0001_R_1", PREFERRED_VOI):
        (tmp_path / "images" / f"{name}.nii.gz").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text(
        "file,world_x,world_y,world_z,label_naslung\n"
        "images/LIDC-IDRI-0001_R_1.nii.gz,1,2,3,0\n"
        f"images/{PREFERRED_VOI}.nii.gz,-48.5,45.4,-90.2,1\n")
    path, world, label = find_voi(tmp_path)
    assert path.name == f"{PREFERRED_VOI}.nii.gz" and world == (-48.5, 45.4, -90.2) and label == "malignant"
