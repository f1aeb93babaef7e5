"""The shipped model and the bundle options that make it: all-data training, the field of view
recorded in the bundle and applied by evaluate, the default bundle."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from naslung.cli.main import main
from naslung.data.dataset import PreparedDataset
from naslung.ensemble import load_bundle, read_manifest
from naslung.ensemble.bundle import default_bundle
from naslung.ensemble.evaluate import match_crop_spec

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "lidc-voi-ensemble"


def test_all_data_bundle_with_recipe_and_box(tmp_path, tiny_dataset_dir, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"epochs": 2, "batch_size": 8, "patience": 0, "soft_labels": 0.0,
                                  "augment_options": {"rot90_p": 1.0}}))
    out = tmp_path / "b"
    assert main(["ensemble", "--models", "tiny", "tiny", "--data", str(tiny_dataset_dir), "--all-data",
                 "--train-config", str(recipe), "--fov-mm", "8,8,4", "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no test fold (--all-data)" in text and "field of view 8x8x4 mm" in text
    man = read_manifest(out)
    assert man["training"]["all_data"] is True and man["training"]["test_fold"] is None
    assert man["training"]["train_config"]["augment_options"] == {"rot90_p": 1.0}
    assert man["crop_spec"]["fov_mm"] == [8.0, 8.0, 4.0]
    assert all(m["info"]["lambda_final"] == 5.0 for m in man["members"])
    ds = PreparedDataset.load(tiny_dataset_dir)
    val = man["training"]["val_fold"]
    assert man["training"]["n_train"] == int((ds.folds != val).sum())  # every fold but validation
    # evaluate will not pass training crops off as a test fold ...
    assert main(["evaluate", "--bundle", str(out), "--data", str(tiny_dataset_dir), "--json"]) == 1
    assert "no held-out test fold" in capsys.readouterr().err
    # ... but scores its validation fold, through the bundle's box (the data has none)
    assert main(["evaluate", "--bundle", str(out), "--data", str(tiny_dataset_dir), "--fold", str(val)]) == 0
    assert "applied the bundle's field of view" in capsys.readouterr().out


def test_match_crop_spec_applies_a_box_and_refuses_other_differences(tiny_dataset):
    import dataclasses

    boxed = dataclasses.replace(tiny_dataset.spec, fov_mm=(8.0, 8.0, 4.0))
    ds, note = match_crop_spec(tiny_dataset, boxed)
    assert ds.spec == boxed and "field of view" in note
    assert match_crop_spec(ds, boxed) == (ds, None)
    with pytest.raises(ValueError, match="differ from the bundle"):
        match_crop_spec(ds, tiny_dataset.spec)                       # a box the bundle never saw
    with pytest.raises(ValueError, match="differ from the bundle"):
        match_crop_spec(tiny_dataset, dataclasses.replace(boxed, fov_mm=(8.0, 8.0, 8.0), spacing_mm=2.0))


def test_default_bundle_env_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("NASLUNG_BUNDLE", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="pass --bundle"):
        default_bundle()
    monkeypatch.delenv("NASLUNG_BUNDLE")
    assert default_bundle() == SHIPPED


def test_shipped_bundle_is_small_checked_and_guarded():
    man = read_manifest(SHIPPED)  # verifies every weight's SHA-256
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 20e6
    ens = load_bundle(SHIPPED)
    assert sum(p.numel() for p in ens.parameters()) < 5_000_000
    assert ens.spec.fov_mm == (24.0, 24.0, 6.0)  # the VOI-border guard travels with the model
    assert man["training"]["all_data"] and (SHIPPED / "REPORT.md").is_file()
    # the guard is applied to any crop: content outside the box cannot change the answer
    rng = np.random.default_rng(0)
    hu = rng.integers(-900, 100, (2, 32, 32, 32)).astype(np.int16)
    other = hu.copy()
    other[:, ~ens.spec.fov_mask()] = 300
    x1 = ens.spec.normalize_torch(torch.from_numpy(hu)).unsqueeze(1)
    x2 = ens.spec.normalize_torch(torch.from_numpy(other)).unsqueeze(1)
    torch.testing.assert_close(ens.predict_proba(x1), ens.predict_proba(x2))


def test_shipped_bundle_on_real_vois(shared_data):
    """A few real VOIs of the bundle's validation fold, cut at their world coordinate as the server cuts them."""
    import csv

    from naslung.data.crop import crop_file_at_world

    ens = load_bundle(SHIPPED)
    rows = [r for r in csv.DictReader(open(shared_data / "lidc-voi" / "labels.csv")) if r["label_naslung"]]
    big = sorted(rows, key=lambda r: -float(r["diameter_mm"]))[:3]
    small = sorted(rows, key=lambda r: float(r["diameter_mm"]))[:3]
    crops = np.stack([crop_file_at_world(str(shared_data / "lidc-voi" / r["file"]),
                                         (float(r["world_x"]), float(r["world_y"]), float(r["world_z"])), ens.spec)
                      for r in big + small])
    p = ens.predict_proba(ens.spec.normalize_torch(torch.from_numpy(crops)).unsqueeze(1))[:, 1]
    assert p[:3].min() > p[3:].max()  # the largest nodules look more malignant than the smallest
