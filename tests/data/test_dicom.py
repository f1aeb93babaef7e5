"""DICOM series written by the test itself: a good series crops onto its nodule; bad series fail clearly."""
from __future__ import annotations

import numpy as np
import pytest

from naslung.data.crop import crop_at_world
from naslung.data.spec import CropSpec
from naslung.data.volume import VolumeError, read_dicom_series, read_volume

SPEC = CropSpec(size=16, spacing_mm=1.0)


def _series(vol, tmp_path, **kw):
    image, center = vol.sphere_volume(shape_zyx=(12, 40, 36), spacing=(0.75, 0.75, 2.0), origin=(-60.0, 20.0, -200.0),
                                      center_index_xyz=(17.2, 19.6, 5.4), radius_mm=4.5, direction=None, **kw)
    return image, center


def test_good_series_reads_in_hu_and_crops_on_the_nodule(vol, tmp_path):
    image, center = _series(vol, tmp_path)
    d = tmp_path / "series"
    vol.write_dicom_series(image, d)
    read = read_volume(d)  # a directory -> the DICOM route
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert float(np.min(np.asarray(__import__("SimpleITK").GetArrayViewFromImage(read)))) == -800.0
    crop = crop_at_world(read, center, SPEC)
    np.testing.assert_allclose(vol.bright_centroid(crop), [SPEC.size // 2] * 3, atol=0.4)


def test_rotated_series_keeps_its_world_geometry(vol, tmp_path):
    image, center = vol.sphere_volume(shape_zyx=(10, 36, 36), spacing=(0.8, 0.8, 1.5), direction=vol.ROTATED,
                                      center_index_xyz=(18.0, 17.5, 4.6), radius_mm=4.0)
    d = tmp_path / "rot"
    vol.write_dicom_series(image, d)
    read = read_dicom_series(d)
    # DICOM stores a right-handed slice normal, so this left-handed direction comes back with z
    # reversed (and the voxels in reverse slice order): the same volume in world space.
    np.testing.assert_allclose(np.asarray(read.GetDirection())[:6], np.asarray(image.GetDirection())[:6], atol=1e-4)
    crop = crop_at_world(read, center, SPEC)
    assert np.abs(crop.astype(int) - crop_at_world(image, center, SPEC)).max() <= 1
    np.testing.assert_allclose(vol.bright_centroid(crop), [SPEC.size // 2] * 3, atol=0.4)


def test_missing_slice_is_reported(vol, tmp_path):
    image, _ = _series(vol, tmp_path)
    d = tmp_path / "gap"
    files = vol.write_dicom_series(image, d)
    files[6].unlink()
    with pytest.raises(VolumeError, match=r"gap: 1 missing slice\(s\): gap of 4\.000 mm"):
        read_dicom_series(d)


def test_mixed_slice_spacing_is_reported(vol, tmp_path):
    image, _ = _series(vol, tmp_path)
    d = tmp_path / "mixed"
    z = [0, 2, 4, 6, 8, 10, 11.25, 12.5, 13.75, 15, 16.25, 17.5]  # 2 mm, then 1.25 mm
    vol.write_dicom_series(image, d, positions_z=z)
    with pytest.raises(VolumeError, match=r"mixed: mixed slice spacing in one series: distances \[1\.25, 2\.0\]"):
        read_dicom_series(d)


def test_duplicate_positions_are_reported(vol, tmp_path):
    image, _ = _series(vol, tmp_path)
    d = tmp_path / "dup"
    z = [0, 2, 4, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    vol.write_dicom_series(image, d, positions_z=z)
    with pytest.raises(VolumeError, match="duplicate slice position"):
        read_dicom_series(d)


def test_corrupt_slice_is_reported(vol, tmp_path):
    image, _ = _series(vol, tmp_path)
    d = tmp_path / "corrupt"
    files = vol.write_dicom_series(image, d)
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) // 2])  # header intact, pixel data cut short
    with pytest.raises(VolumeError, match=r"slice004\.dcm: DICOM slice .*corrupt is truncated"):
        read_dicom_series(d)


def test_empty_directory_and_unknown_series(vol, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="empty: contains no readable DICOM series"):
        read_dicom_series(tmp_path / "empty")
    image, _ = _series(vol, tmp_path)
    vol.write_dicom_series(image, tmp_path / "s")
    with pytest.raises(VolumeError, match="has no DICOM series 9.9.9"):
        read_dicom_series(tmp_path / "s", series_uid="9.9.9")
