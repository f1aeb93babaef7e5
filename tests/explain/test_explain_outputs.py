"""Files people open: PNG figures (orientation, content), NIfTI geometry, the viewer page's payload."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.data.crop import crop_at_world
from naslung.data.spec import CropSpec
from naslung.explain import AttributionMap, Geometry, explain, export_nifti, write_explanation
from naslung.explain.figure import PLANES, render_map_png, window_ct
from naslung.explain.viewer import viewer_payload, write_viewer

SPEC16 = CropSpec(size=16)
SUMMARY = {"predicted_name": "malignant", "p_malignant": 0.875, "target_name": "malignant"}


def _map(values, method="gradcam", layer="stages.1"):
    return AttributionMap(method, layer, np.asarray(values, np.float32), 1)


def test_planes_follow_radiological_convention():
    v = np.zeros((4, 4, 4))
    v[3, 1, 0] = 1  # z=3 (most superior), y=1 (anterior half), x=0 (patient right in LPS)
    ax = PLANES["axial"][0](v, 3)
    assert ax[1, 0] == 1  # row y: anterior on top; column x: patient right on the image left
    co = PLANES["coronal"][0](v, 1)
    assert co[0, 0] == 1  # superior slice drawn on top
    sa = PLANES["sagittal"][0](v, 0)
    assert sa[0, 1] == 1  # superior on top, anterior (small y) on the left


def test_lung_window():
    np.testing.assert_allclose(window_ct(np.array([-1350, -600, 150, 1000])), [0, 0.5, 1, 1])


def test_png_has_overlay_where_the_map_is(tmp_path, blob_crop):
    import matplotlib.image as mpimg

    vals = np.zeros((16, 16, 16), np.float32)
    base = render_map_png(blob_crop, _map(vals), SUMMARY, tmp_path / "empty.png")
    vals[6:10, 6:10, 6:10] = 1.0  # a hot cube at the centre of every central plane
    hot = render_map_png(blob_crop, _map(vals), SUMMARY, tmp_path / "hot.png")
    a, b = mpimg.imread(base)[..., :3], mpimg.imread(hot)[..., :3]
    assert a.shape == b.shape and a.shape[0] > 400 and a.shape[1] > 800
    diff = np.abs(a - b).sum(-1) > 0.1
    assert diff.sum() > 2000  # the overlay is visible...

    def reddish(img):  # ...and coloured (jet is red at 1.0) where the grey CT was
        return (img[..., 0] - img[..., 1:].max(-1)) > 0.25

    assert reddish(b).sum() > reddish(a).sum() + 1000
    ct_only = render_map_png(blob_crop, None, SUMMARY, tmp_path / "ct.png")
    assert ct_only.stat().st_size > 10_000


def test_nifti_export_lands_on_the_scan(tmp_path):
    # A synthetic scan with a non-trivial grid: anisotropic spacing, off-origin, a bright marker.
    arr = np.full((20, 40, 40), -900, np.int16)
    arr[10, 12, 30] = 800
    scan = sitk.GetImageFromArray(arr)
    scan.SetSpacing((0.8, 0.7, 2.0))
    scan.SetOrigin((-20.0, 35.5, -110.0))
    marker = scan.TransformIndexToPhysicalPoint((30, 12, 10))
    crop = crop_at_world(scan, marker, SPEC16)
    m = _map(np.linspace(0, 1, 16 ** 3).reshape(16, 16, 16))
    paths = export_nifti(tmp_path, crop, [m], Geometry.for_crop(marker, SPEC16))
    assert set(paths) == {"crop", "gradcam"}
    back = sitk.ReadImage(str(paths["crop"]))
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), crop)
    # voxel S//2 of the written crop sits on the world point, and it is the marker's voxel
    np.testing.assert_allclose(back.TransformIndexToPhysicalPoint((8, 8, 8)), marker, atol=1e-4)
    assert sitk.GetArrayFromImage(back)[8, 8, 8] == crop.max() > 0
    mp = sitk.ReadImage(str(paths["gradcam"]))
    assert mp.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(mp), m.values)
    assert mp.GetOrigin() == back.GetOrigin() and mp.GetSpacing() == back.GetSpacing()
    # resampling the scan onto the map's grid reproduces the crop: the overlay is registered
    res = sitk.Resample(scan, mp, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayFromImage(res), crop, atol=1)


def test_geometry_from_affine_roundtrip():
    g = Geometry((1.0, 2.0, 3.0), (0.5, 0.6, 2.0), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    h = Geometry.from_affine(g.affine)
    np.testing.assert_allclose(h.origin, g.origin)
    np.testing.assert_allclose(h.spacing, g.spacing)
    np.testing.assert_allclose(h.direction, g.direction, atol=1e-12)
    with pytest.raises(ValueError, match="4x4"):
        Geometry.from_affine(np.eye(3))


def test_viewer_page_is_self_contained(tmp_path, blob_crop):
    m1 = _map(np.random.default_rng(0).random((16, 16, 16)))
    m2 = _map(np.zeros((16, 16, 16)), "ig", "input")
    p = write_viewer(tmp_path / "v.html", blob_crop, [m1, m2], dict(SUMMARY, facts={"input": "<script>x</script>"}))
    html = p.read_text()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)  # nothing fetched from anywhere
    assert "<script>x</script>" not in html  # user text is data, escaped in JSON and again by the page
    payload = json.loads(re.search(r'id="naslung-data" type="application/json">(.*?)</script>', html, re.S)
                         .group(1).replace("<\\/", "</"))
    ct = np.frombuffer(base64.b64decode(payload["ct"]), "<i2").reshape(16, 16, 16)
    np.testing.assert_array_equal(ct, blob_crop)
    q = np.frombuffer(base64.b64decode(payload["maps"][0]["data"]), np.uint8).reshape(16, 16, 16)
    np.testing.assert_allclose(q / 255, m1.values, atol=0.5 / 255 + 1e-6)
    assert [m["key"] for m in payload["maps"]] == ["gradcam", "ig"]
    assert len(payload["lut"]) == 256 * 3
    with pytest.raises(ValueError, match="shape"):
        viewer_payload(blob_crop, [_map(np.zeros((8, 8, 8)))], SUMMARY)


def test_write_explanation_files(tmp_path, tiny_model, blob_crop):
    e = explain(tiny_model, blob_crop, SPEC16, ["gradcam", "ig"], ig_steps=4)
    rec = write_explanation(tmp_path, e, blob_crop, SPEC16, Geometry.for_crop((1.0, 2.0, 3.0), SPEC16),
                            facts={"input": "blob"})
    files = rec["files"]
    assert (tmp_path / files["overview_png"]).is_file() and (tmp_path / files["html"]).is_file()
    assert sorted(files["png"]) == sorted(m.key for m in e.maps)
    assert all((tmp_path / f).is_file() for f in files["png"].values())
    assert set(files["nifti"]) == {"crop", *(m.key for m in e.maps)}
    saved = json.loads((tmp_path / "explanation.json").read_text())
    assert saved["prediction"]["proba"] == pytest.approx(list(map(float, e.proba)))
    assert [m["key"] for m in saved["maps"]] == [m.key for m in e.maps]
    assert saved["geometry"]["origin_lps_mm"] == pytest.approx([1.0 - 8, 2.0 - 8, 3.0 - 8])
