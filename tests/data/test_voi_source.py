"""``--source voi``: synthetic VOI folders with planted problems, the real lidc-voi data, and the CLI."""
from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.cli.main import main
from naslung.data.crop import crop_mask_at_world
from naslung.data.dataset import PreparedDataset
from naslung.data.prepare import prepare_dataset
from naslung.data.sources.base import SourceOptions
from naslung.data.spec import CropSpec
from naslung.data.volume import read_image_file

SPEC = CropSpec(size=16)
COLUMNS = ["file", "mask_file", "patient_id", "nodule_id", "seriesuid", "world_x", "world_y", "world_z",
           "diameter_mm", "label_naslung", "label_majority", "n_readers", "texture"]


def _write_voi_dir(root: Path, vol, n_good: int = 8) -> dict:
    """n_good VOIs (half without mask -> world coordinate), plus: a missing file, a corrupt file,
    an empty mask, a world coordinate outside its VOI, and an unlabelled row."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, centers = [], {}
    for i in range(n_good):
        image, center = vol.sphere_volume(shape_zyx=(6, 30, 28), spacing=(0.7, 0.7, 2.0),
                                          origin=(-50.0 + 10 * i, 20.0, -150.0 - 5 * i), direction=None,
                                          center_index_xyz=(13.5 + i % 3, 14.2, 2.6), radius_mm=3.0)
        name = f"P{i // 2:02d}_R_{i}.nii.gz"
        sitk.WriteImage(image, str(root / "images" / name))
        with_mask = i % 2 == 0
        if with_mask:
            sitk.WriteImage(vol.sphere_mask(image, center, 3.0), str(root / "masks" / name))
        rows.append({"file": f"images/{name}", "mask_file": f"masks/{name}" if with_mask else "",
                     "patient_id": f"P{i // 2:02d}", "nodule_id": i, "seriesuid": f"1.2.{i // 2}",
                     "world_x": center[0], "world_y": center[1], "world_z": center[2],
                     "diameter_mm": 6.0, "label_naslung": i % 2, "label_majority": 1, "n_readers": 4, "texture": 5})
        centers[name.removesuffix(".nii.gz")] = center
    good_image, good_center = vol.sphere_volume(shape_zyx=(6, 30, 28), direction=None, center_index_xyz=(14, 15, 2.5))
    sitk.WriteImage(good_image, str(root / "images" / "X_corrupt.nii.gz"))
    (root / "images" / "X_corrupt.nii.gz").write_bytes(b"\x1f\x8b garbage")
    empty = sitk.Image(good_image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(good_image)
    sitk.WriteImage(good_image, str(root / "images" / "X_empty.nii.gz"))
    sitk.WriteImage(empty, str(root / "masks" / "X_empty.nii.gz"))
    sitk.WriteImage(good_image, str(root / "images" / "X_outside.nii.gz"))
    sitk.WriteImage(good_image, str(root / "images" / "X_unlabelled.nii.gz"))
    bad = dict(rows[0], patient_id="PX", world_x=good_center[0], world_y=good_center[1], world_z=good_center[2])
    rows += [
        dict(bad, file="images/X_missing.nii.gz", mask_file=""),
        dict(bad, file="images/X_corrupt.nii.gz", mask_file=""),
        dict(bad, file="images/X_empty.nii.gz", mask_file="masks/X_empty.nii.gz"),
        dict(bad, file="images/X_outside.nii.gz", mask_file="", world_z=good_center[2] + 400.0),
        dict(bad, file="images/X_unlabelled.nii.gz", mask_file="", label_naslung=""),
    ]
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return centers


def test_voi_source_crops_on_the_nodule_and_skips_bad_items(tmp_path, vol):
    centers = _write_voi_dir(tmp_path / "voi", vol)
    ds = prepare_dataset("voi", SourceOptions(input=tmp_path / "voi", spec=SPEC, progress=False), folds=3)
    assert len(ds) == 8 and ds.crops.shape == (8, *SPEC.shape)
    assert ds.meta["unlabelled_dropped"] == 1
    reasons = {s.item: s.reason for s in ds.skipped}
    assert set(reasons) == {"images/X_missing.nii.gz", "images/X_corrupt.nii.gz", "images/X_empty.nii.gz",
                            "images/X_outside.nii.gz"}
    assert "X_missing.nii.gz: file not found" in reasons["images/X_missing.nii.gz"]
    assert "cannot be read" in reasons["images/X_corrupt.nii.gz"]
    assert "mask is empty" in reasons["images/X_empty.nii.gz"]
    assert "outside the volume" in reasons["images/X_outside.nii.gz"]
    for r, crop in zip(ds.rows, ds.crops):
        np.testing.assert_allclose([r["center_x"], r["center_y"], r["center_z"]], centers[r["id"]], atol=0.35)
        assert r["center_from"] == ("mask" if r["mask_file"] else "world")
        np.testing.assert_allclose(vol.bright_centroid(crop), [SPEC.size // 2] * 3, atol=0.6)
        assert 0.0 < r["fov_fraction"] < 1.0  # 12 mm deep VOI in a 16 mm crop: some padding
        assert (crop == -1000).any()
    assert [r["label"] for r in ds.rows] == [i % 2 for i in range(8)]
    assert {r["texture"] for r in ds.rows} == {"5"}
    # patient-grouped folds: both nodules of a patient share a fold
    by_patient = {}
    for pid, f in zip(ds.patient_ids, ds.folds):
        assert by_patient.setdefault(pid, f) == f


def test_voi_fixed_field_of_view(tmp_path, vol):
    _write_voi_dir(tmp_path / "voi", vol, n_good=4)
    plain = prepare_dataset("voi", SourceOptions(input=tmp_path / "voi", spec=SPEC, progress=False), folds=0)
    boxed = prepare_dataset("voi", SourceOptions(input=tmp_path / "voi", spec=SPEC, progress=False,
                                                 extra={"fov_mm": "8,8,6"}), folds=0)
    assert boxed.meta["fov_mm"] == [8.0, 8.0, 6.0]
    for a, b, ra, rb in zip(plain.crops, boxed.crops, plain.rows, boxed.rows):
        assert (b == -1000).sum() > (a == -1000).sum()
        assert rb["fov_fraction"] < ra["fov_fraction"]
        np.testing.assert_array_equal(b[5:12, 5:12, 5:12][b[5:12, 5:12, 5:12] != -1000],
                                      a[5:12, 5:12, 5:12][b[5:12, 5:12, 5:12] != -1000])


def test_voi_label_column_and_missing_column(tmp_path, vol):
    _write_voi_dir(tmp_path / "voi", vol, n_good=4)
    ds = prepare_dataset("voi", SourceOptions(input=tmp_path / "voi", spec=SPEC, progress=False,
                                              label_column="label_majority"), folds=0)
    assert len(ds) == 5 and set(ds.labels.tolist()) == {1}  # the unlabelled row has label_majority
    with pytest.raises(ValueError, match="no column 'nope'"):
        prepare_dataset("voi", SourceOptions(input=tmp_path / "voi", label_column="nope", progress=False))
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        prepare_dataset("voi", SourceOptions(input=tmp_path / "absent", progress=False))


def test_cli_prepare_voi_prints_summary(tmp_path, vol, capsys):
    _write_voi_dir(tmp_path / "voi", vol)
    out = tmp_path / "ds"
    rc = main(["prepare", "--source", "voi", "--input", str(tmp_path / "voi"), "--crop-size", "16", "--folds", "3",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "prepared 8 crops from source 'voi'" in text
    for pattern in (r"malignant\s+4\n", r"benign\s+4\n", r"patients\s+4\n", r"dropped\s+1\s+\(unlabelled\)",
                    r"skipped\s+4\n", r"1 x file not found", r"X_missing\.nii\.gz: file not found", r"folds\s+3"):
        assert re.search(pattern, text), (pattern, text)
    ds = PreparedDataset.load(out)
    assert len(ds) == 8 and ds.spec.size == 16 and len(ds.skipped) == 4 and ds.folds.max() == 2


def test_cli_prepare_reports_errors_without_traceback(tmp_path, capsys):
    rc = main(["prepare", "--source", "voi", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "labels.csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real data
def test_real_voi_few_files_centre_on_mask(shared_data):
    root = shared_data / "lidc-voi"
    ds = prepare_dataset("voi", SourceOptions(input=root, limit=12, progress=False), folds=0)
    assert len(ds) == 12 and not ds.skipped and ds.crops.shape[1:] == (32, 32, 32)
    with open(root / "labels.csv", newline="") as f:
        table = {r["file"]: r for r in csv.DictReader(f)}
    for r, crop in zip(ds.rows, ds.crops):
        src = table[r["file"]]
        assert r["label"] == int(src["label_naslung"]) and r["patient_id"] == src["patient_id"]
        # the mask centroid is the nodule: the recorded world coordinate lies within a few mm of it
        d = np.linalg.norm(np.array([r["center_x"], r["center_y"], r["center_z"]], float)
                           - np.array([src["world_x"], src["world_y"], src["world_z"]], float))
        assert d < max(3.0, float(src["diameter_mm"]) / 2)
        mask = read_image_file(root / src["mask_file"])
        m = crop_mask_at_world(mask, (r["center_x"], r["center_y"], r["center_z"]), ds.spec)
        assert m[16, 16, 16] == 1 or m.sum() < 30  # centre voxel is nodule unless the nodule is tiny
        assert crop[16, 16, 16] > -900  # not padding, not air
        assert (crop == -1000).mean() < 1.0


def test_real_voi_all_585_and_505_labelled(shared_data):
    root = shared_data / "lidc-voi"
    t0 = time.perf_counter()
    ds = prepare_dataset("voi", SourceOptions(input=root, label_column="label_majority", progress=False), folds=10)
    elapsed = time.perf_counter() - t0
    assert len(ds) == 585 and not ds.skipped, [s.reason for s in ds.skipped[:3]]
    assert len(set(ds.patient_ids)) == 323
    assert elapsed < 60
    # the default label (label_naslung): 505 of these rows, 238 malignant
    with open(root / "labels.csv", newline="") as f:
        labelled = [r for r in csv.DictReader(f) if r["label_naslung"].strip() != ""]
    assert len(labelled) == 505
    by_file = {r["file"]: int(r["label_naslung"]) for r in labelled}
    sub = [i for i, r in enumerate(ds.rows) if r["file"] in by_file]
    assert len(sub) == 505 and sum(by_file[ds.rows[i]["file"]] for i in sub) == 238


def test_real_voi_cli_default_command(shared_data, tmp_path, capsys):
    """The issue's command: naslung prepare --source voi --input ../shared/data/lidc-voi --out D."""
    out = tmp_path / "voi_ds"
    assert main(["prepare", "--source", "voi", "--input", str(shared_data / "lidc-voi"), "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for pattern in (r"prepared 505 crops", r"malignant\s+238\n", r"benign\s+267\n", r"dropped\s+80\s+\(unlabelled\)",
                    r"folds\s+10", r"skipped\s+0\n"):
        assert re.search(pattern, text), (pattern, text)
    ds = PreparedDataset.load(out)
    assert len(ds) == 505 and ds.crops.dtype == np.int16 and ds.folds.min() == 0 and ds.folds.max() == 9
    assert {"seriesuid", "world_x", "n_readers", "texture", "fov_fraction", "center_from"} <= set(ds.rows[0])
