"""The embedded lidc-shapes source: asset integrity, counts, deterministic rendering, plausibility."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from naslung.data.dataset import PreparedDataset
from naslung.data.sources import get_source
from naslung.data.sources.base import SourceOptions
from naslung.data.sources.lidc_shapes import (ASSET_PATH, AssetError, load_asset, prepare, render_crop,
                                              select, texture_hu)
from naslung.data.spec import CropSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def asset():
    return load_asset()


def _opts(**kw):
    kw.setdefault("label_rule", "median")
    kw.setdefault("min_readers", 3)
    kw.setdefault("progress", False)
    return SourceOptions(**kw)


def test_asset_is_small_and_holds_the_median_set(asset):
    assert ASSET_PATH.stat().st_size < 400_000
    sel = select(asset, "median", 3)
    y = np.array(sel.labels)
    n_mal, n_ben = int(y.sum()), int((y == 0).sum())
    # The >= 3-reader median-rule LIDC set as reported in the literature (~879 nodules, ~430 malignant).
    assert 850 <= len(y) <= 900 and 410 <= n_mal <= 450
    assert n_mal + n_ben == len(sel.index)
    assert all(len(asset.malignancy(i)) >= 3 for i in range(len(asset)))
    assert sum(sel.dropped.values()) + len(sel.index) == len(asset)


def test_source_produces_the_asset_counts(asset):
    ds = get_source("lidc-shapes")(_opts(limit=40))
    assert isinstance(ds, PreparedDataset) and len(ds) == 40
    sel = select(asset, "median", 3)
    assert list(ds.labels) == sel.labels[:40]
    assert ds.crops.dtype == np.int16 and ds.crops.shape == (40, 32, 32, 32)
    r = ds.rows[0]
    for col in ("id", "patient_id", "label", "diameter_mm", "source", "n_readers", "rating_texture",
                "malignancy_median"):
        assert col in r
    assert ds.meta["label_rule"] == "median" and ds.meta["min_readers"] == 3
    assert len(set(ds.ids)) == len(ds)


@pytest.mark.slow
def test_full_default_set(asset, tmp_path):
    ds = prepare(_opts())
    s = ds.summary()
    sel = select(asset, "median", 3)
    assert s["n"] == len(sel.index) and s["malignant"] == sum(sel.labels)
    ds.save(tmp_path / "d")
    assert len(PreparedDataset.load(tmp_path / "d")) == s["n"]


def test_default_rule_is_median_and_mean_rule_available(asset):
    ds = prepare(SourceOptions(label_rule=None, min_readers=1, limit=5, progress=False))
    assert ds.meta["label_rule"] == "median" and ds.meta["min_readers"] == 3
    sel_mean = select(asset, "mean", 3)
    assert len(sel_mean.index) != len(select(asset, "median", 3).index)
    ds2 = prepare(_opts(label_rule="mean", limit=5))
    assert list(ds2.labels) == sel_mean.labels[:5]


def test_rendering_is_deterministic_per_seed():
    a = prepare(_opts(limit=6, seed=3))
    b = prepare(_opts(limit=6, seed=3))
    c = prepare(_opts(limit=6, seed=4))
    assert np.array_equal(a.crops, b.crops)
    assert not np.array_equal(a.crops, c.crops)
    # A crop depends on (seed, nodule), not on how many were asked for.
    d = prepare(_opts(limit=3, seed=3))
    assert np.array_equal(a.crops[:3], d.crops)


def test_malignant_masks_are_larger(asset):
    sel = select(asset, "median", 3)
    y = np.array(sel.labels)
    vox = np.array([asset.mask(i).sum() for i in sel.index])
    # Radiologists rate large nodules more suspicious: a well-known LIDC property.
    assert np.median(vox[y == 1]) > 3 * np.median(vox[y == 0])
    assert np.median(asset.arrays["diameter_mm"][sel.index][y == 1]) > np.median(
        asset.arrays["diameter_mm"][sel.index][y == 0])


def test_nodule_brighter_than_parenchyma(asset):
    ds = prepare(_opts(limit=30))
    sel = select(asset, "median", 3)
    for k, i in enumerate(sel.index[:30]):
        m = asset.mask(i)
        crop = ds.crops[k].astype(float)
        # The crop's own grid is the mask's (32^3 at 1 mm, same centre).
        core = m & (np.abs(np.indices(m.shape) - 16).max(axis=0) < 32)
        assert crop[core].mean() > np.median(crop[~m]) + 150, ds.rows[k]["id"]
        assert -950 < np.median(crop[~m]) < -650


def test_texture_and_calcification_drive_hu():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices((32, 32, 32)) - 16
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= 6 ** 2
    inner = zz ** 2 + yy ** 2 + xx ** 2 <= 3 ** 2
    ggo = render_crop(ball, {"texture": 1.0, "calcification": 6.0}, np.random.default_rng(1))
    solid = render_crop(ball, {"texture": 5.0, "calcification": 6.0}, np.random.default_rng(1))
    calc = render_crop(ball, {"texture": 5.0, "calcification": 3.0}, np.random.default_rng(1))
    assert -700 < ggo[inner].mean() < -350
    assert -100 < solid[inner].mean() < 120
    assert calc[inner].mean() > 200
    assert texture_hu(3.0, rng)[1] is not None and texture_hu(5.0, rng)[1] is None


def test_other_crop_sizes_and_spacing(asset):
    spec = CropSpec(size=16, spacing_mm=2.0)
    ds = prepare(_opts(limit=4, spec=spec))
    assert ds.crops.shape == (4, 16, 16, 16)
    big = prepare(_opts(limit=2, spec=CropSpec(size=48)))
    assert big.crops.shape == (2, 48, 48, 48)
    # Same nodule, same centre convention: the centre voxel is inside the nodule in both.
    i = select(asset, "median", 3).index[0]
    if asset.mask(i)[16, 16, 16]:
        assert big.crops[0][24, 24, 24] > -400 and ds.crops[0][8, 8, 8] > -500


def test_corrupted_asset_is_rejected(tmp_path):
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(ASSET_PATH.read_bytes()[: 50_000])
    with pytest.raises(AssetError, match="truncated.npz.*corrupted"):
        load_asset(bad)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all" * 100)
    with pytest.raises(AssetError, match="garbage.npz"):
        load_asset(garbage)
    with pytest.raises(AssetError, match="not found"):
        load_asset(tmp_path / "missing.npz")


def test_edited_asset_fails_checksum(tmp_path):
    with np.load(ASSET_PATH) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["masks"] = arrays["masks"].copy()
    arrays["masks"][0, 100] ^= 0xFF          # flip bits of one mask: still a valid zip
    p = tmp_path / "edited.npz"
    np.savez_compressed(p, **arrays)
    with pytest.raises(AssetError, match="checksum"):
        load_asset(p)
    with pytest.raises(AssetError, match="checksum"):
        prepare(_opts(input=p, limit=1))


def _load_script():
    spec = importlib.util.spec_from_file_location("build_lidc_shapes_asset",
                                                  REPO / "scripts" / "build_lidc_shapes_asset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_core_on_real_annotations(tmp_path, asset):
    mod = _load_script()
    t0 = time.time()
    recs = mod.process_scan(1, min_readers=3)           # LIDC-IDRI-0078: three 4-reader nodules
    assert time.time() - t0 < 20
    assert len(recs) == 3 and all(r["n_readers"] == 4 for r in recs)
    for r in recs:
        m = np.unpackbits(r["packed"]).reshape(32, 32, 32).astype(bool)
        c = np.argwhere(m).mean(axis=0)
        assert np.all(np.abs(c - 16) < 1.0)               # centroid on voxel 16
        # 1 mm^3 voxels: resampled voxel count ~ consensus volume in mm^3.
        assert abs(m.sum() - r["volume_mm3"]) / r["volume_mm3"] < 0.15
    # Matches what the shipped asset holds for this scan.
    rows = np.flatnonzero(asset.arrays["scan_id"] == 1)
    assert len(rows) == 3
    shipped = {int(asset.arrays["nodule_index"][i]): asset.arrays["masks"][i] for i in rows}
    for r in recs:
        assert np.array_equal(shipped[r["nodule_index"]], r["packed"])
    # And the asset writer round-trips through the loader.
    info = mod.write_asset(tmp_path / "a.npz", recs, 32, 1.0, 3)
    small = load_asset(tmp_path / "a.npz")
    assert len(small) == 3 == info["n"]
    assert small.malignancy(0) == recs[0]["malignancy"]


def test_resample_mask_geometry():
    mod = _load_script()
    # A 10 mm-diameter ball drawn on a 0.5 mm x 0.5 mm x 1.25 mm grid comes out round at 1 mm.
    ps, dz = 0.5, 1.25
    zvals = np.arange(40) * dz + 100.0
    ii, jj, kk = np.meshgrid(np.arange(60), np.arange(60), np.arange(40), indexing="ij")
    c = np.array([30.0, 30.0, 20.0])
    ball = ((ii - c[0]) * ps) ** 2 + ((jj - c[1]) * ps) ** 2 + ((kk - c[2]) * dz) ** 2 < 5 ** 2
    cube, clipped = mod.resample_mask(ball, np.zeros(3, int), c, zvals, ps)
    assert not clipped
    ext = np.argwhere(cube)
    extent = ext.max(axis=0) - ext.min(axis=0) + 1
    assert np.all(np.abs(extent - 10) <= 2), extent
    assert np.all(np.abs(ext.mean(axis=0) - 16) < 0.6)


def test_resample_mask_uses_real_slice_positions():
    mod = _load_script()
    # Slices 1 mm apart, except one 3 mm step inside the ball: it must stay round in mm.
    zvals = np.r_[np.arange(0, 18, 1.0), np.arange(20, 40, 1.0)] + 50.0
    ps = 0.8
    ii, jj, kk = np.meshgrid(np.arange(40), np.arange(40), np.arange(len(zvals)), indexing="ij")
    c_mm = np.array([16.0, 16.0, 20.0 + 50.0])          # i, j in mm; z world
    d2 = (ii * ps - c_mm[0]) ** 2 + (jj * ps - c_mm[1]) ** 2 + (zvals[kk] - c_mm[2]) ** 2
    ball = d2 < 6.0 ** 2
    ck = np.interp(c_mm[2], zvals, np.arange(len(zvals)))
    cube, _ = mod.resample_mask(ball, np.zeros(3, int), np.array([20.0, 20.0, ck]), zvals, ps)
    ext = np.argwhere(cube)
    assert abs((ext[:, 0].max() - ext[:, 0].min() + 1) - 12) <= 1.5     # 12 mm along z, not stretched
    assert abs(ext[:, 0].mean() - 16) < 0.6
