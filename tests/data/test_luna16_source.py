"""``--source luna16`` on .mhd/.raw volumes written here, with planted nodules at known world coordinates."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.cli.main import main
from naslung.data.dataset import PreparedDataset
from naslung.data.prepare import prepare_dataset
from naslung.data.sources.base import SourceOptions
from naslung.data.sources.luna16 import read_labels
from naslung.data.spec import CropSpec

SPEC = CropSpec(size=16)
HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm,malignant"


def _write_luna(root: Path, vol) -> dict:
    """4 scans over subset0/subset1 (one scan rotated), 2 nodules each; labels + mapping files.
    Plus label rows for: a scan that is absent, a coordinate outside its scan, a broken scan."""
    truth = {}
    lines = [HEADER]
    mapping = ["PatientID StudyInstanceUID SeriesInstanceUID "]
    for s in range(4):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{1000 + s}"
        subset = f"subset{s % 2}"
        image, c1 = vol.sphere_volume(shape_zyx=(20, 48, 44), spacing=(0.7, 0.7, 2.5),
                                      origin=(-150.0 + 20 * s, -180.0, -320.0 + 7 * s),
                                      direction=vol.ROTATED if s == 3 else None,
                                      center_index_xyz=(12.0, 14.0, 5.0), radius_mm=4.0, inside=80)
        arr = sitk.GetArrayFromImage(image)
        # a second nodule, smaller, elsewhere in the same scan
        c2 = image.TransformContinuousIndexToPhysicalPoint((31.0, 33.5, 14.0))
        arr = np.maximum(arr, sitk.GetArrayFromImage(vol.sphere_mask(image, c2, 3.0)).astype(np.int16) * 900 - 800)
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        (root / subset).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(out, str(root / subset / f"{uid}.mhd"))
        for k, (c, d, y) in enumerate([(c1, 8.0, 1), (c2, 6.0, 0)]):
            ratings = ",".join(["4", "5", "3"][: 2 + k])
            lines.append(f"{uid},{c[0]:.6f},{c[1]:.6f},{c[2]:.6f},{d},{y},{ratings}")
            truth[f"{uid}-{k}"] = (c, y, subset)
        mapping.append(f"LIDC-IDRI-{s // 2:04d} 1.2.3.{s} {uid} ")
    lines.append("1.3.6.1.4.1.14519.5.2.1.6279.6001.9999,0,0,0,5,1,3,3")  # scan not in the input
    uid0 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.1000"
    lines.append(f"{uid0},900,0,0,5,1,3")  # outside its scan
    broken = "1.3.6.1.4.1.14519.5.2.1.6279.6001.8888"
    (root / "subset1" / f"{broken}.mhd").write_text("ObjectType = Image\nNDims = 3\nElementDataFile = gone.raw\n")
    lines.append(f"{broken},0,0,0,5,0,2")
    (root / "labels").mkdir()
    (root / "labels" / "annotationdetclssgm_doctor.csv").write_text("\n".join(lines) + "\n")
    (root / "labels" / "LIDC-IDRI-mappingLUNA16").write_text("\n".join(mapping) + "\n")
    return truth


def test_luna16_crops_on_planted_nodules_with_subsets_and_patients(tmp_path, vol):
    truth = _write_luna(tmp_path / "luna", vol)
    opts = SourceOptions(input=tmp_path / "luna", labels_csv=tmp_path / "luna" / "labels" / "annotationdetclssgm_doctor.csv",
                         spec=SPEC, progress=False)
    ds = prepare_dataset("luna16", opts, fold_column="subset")
    assert len(ds) == 8
    for r, crop in zip(ds.rows, ds.crops):
        c, y, subset = truth[r["id"]]
        assert r["label"] == y and r["subset"] == subset
        np.testing.assert_allclose([r["world_x"], r["world_y"], r["world_z"]], c, atol=1e-4)
        np.testing.assert_allclose(vol.bright_centroid(crop), [SPEC.size // 2] * 3, atol=0.5)
    # patient ids from the mapping file (found beside the label table); folds = subsets
    assert sorted(set(ds.patient_ids)) == ["LIDC-IDRI-0000", "LIDC-IDRI-0001"]
    assert [f for f in ds.folds] == [int(r["subset"][-1]) for r in ds.rows]
    assert ds.rows[0]["ratings"] == "4;5" and ds.rows[1]["ratings"] == "4;5;3"
    reasons = {s.item: s.reason for s in ds.skipped}
    assert len(reasons) == 3
    assert "no volume 1.3.6.1.4.1.14519.5.2.1.6279.6001.9999.mhd" in reasons["1.3.6.1.4.1.14519.5.2.1.6279.6001.9999-0"]
    assert "outside the volume" in reasons["1.3.6.1.4.1.14519.5.2.1.6279.6001.1000-2"]
    assert "data file gone.raw is missing" in reasons["1.3.6.1.4.1.14519.5.2.1.6279.6001.8888-0"]


def test_luna16_without_mapping_uses_series_uid_and_limit(tmp_path, vol):
    _write_luna(tmp_path / "luna", vol)
    (tmp_path / "luna" / "labels" / "LIDC-IDRI-mappingLUNA16").unlink()
    opts = SourceOptions(input=tmp_path / "luna", labels_csv=tmp_path / "luna" / "labels" / "annotationdetclssgm_doctor.csv",
                         spec=SPEC, progress=False, limit=5)
    ds = prepare_dataset("luna16", opts, folds=0)
    assert len(ds) == 4  # 5 items: 3 of the first scan (one outside it), 2 of the next
    assert all(p.startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.") for p in ds.patient_ids)


def test_luna16_cli_fold_by_subset(tmp_path, vol, capsys):
    _write_luna(tmp_path / "luna", vol)
    labels = tmp_path / "luna" / "labels"
    rc = main(["prepare", "--source", "luna16", "--input", str(tmp_path / "luna"),
               "--labels", str(labels / "annotationdetclssgm_doctor.csv"),
               "--mapping", str(labels / "LIDC-IDRI-mappingLUNA16"), "--crop-size", "16", "--fold-by-subset",
               "--no-progress", "--out", str(tmp_path / "ds")])
    assert rc == 0
    text = capsys.readouterr().out
    assert re.search(r"folds\s+2\s+\(column\)", text) and re.search(r"skipped\s+3\n", text), text
    ds = PreparedDataset.load(tmp_path / "ds")
    assert ds.meta["folds"]["column"] == "subset" and set(ds.folds.tolist()) == {0, 1}


def test_luna16_bad_tables(tmp_path):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,x,y\n1,2,3\n")
    with pytest.raises(ValueError, match="not a LUNA16 label table"):
        prepare_dataset("luna16", SourceOptions(input=tmp_path / "in", labels_csv=bad, progress=False))
    with pytest.raises(FileNotFoundError, match="label table not found"):
        prepare_dataset("luna16", SourceOptions(input=tmp_path / "in", progress=False))
    with pytest.raises(ValueError, match="--input"):
        prepare_dataset("luna16", SourceOptions(progress=False))


def test_real_luna16_label_table_parses(shared_data):
    rows = read_labels(shared_data / "luna16-labels" / "annotationdetclssgm_doctor.csv")
    assert len(rows) == 1004
    assert sum(int(r["malignant"]) for r in rows) == 450
    assert all(r["ratings"] for r in rows)
