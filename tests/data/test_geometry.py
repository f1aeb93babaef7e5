"""Reading volumes and cropping at world coordinates: the crop must land on the planted nodule."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.data.crop import (crop_as_image, crop_at_world, crop_coverage, crop_mask_at_world, is_inside,
                               mask_centroid_world)
from naslung.data.spec import CropSpec
from naslung.data.volume import (EmptyMaskError, OutsideVolumeError, VolumeError, image_from_array,
                                 read_image_file, read_volume)

SPEC = CropSpec(size=24, spacing_mm=1.0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mhd"])
@pytest.mark.parametrize("rotated", [False, True])
def test_planted_sphere_lands_at_crop_centre(tmp_path, vol, suffix, rotated):
    image, center = vol.sphere_volume(direction=vol.ROTATED if rotated else None)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    read = read_volume(path)
    assert read.GetSpacing() == pytest.approx(image.GetSpacing())
    crop = crop_at_world(read, center, SPEC, source=str(path))
    assert crop.shape == SPEC.shape and crop.dtype == np.int16
    c = vol.bright_centroid(crop)
    np.testing.assert_allclose(c, [SPEC.size // 2] * 3, atol=0.35)
    # 1 mm isotropic: a 5 mm sphere has ~4/3 pi 5^3 = 524 voxels above the half-way HU level.
    assert 380 < (crop > -370).sum() < 680
    assert crop[SPEC.size // 2, SPEC.size // 2, SPEC.size // 2] > 0


def test_crop_axes_follow_world_axes(vol):
    """Crop axis (z, y, x) runs along world +z, +y, +x whatever the source direction."""
    image, center = vol.sphere_volume(direction=vol.ROTATED, radius_mm=3.0)
    shifted = (center[0] - 4.0, center[1] + 2.0, center[2] - 3.0)  # look from a point off the sphere
    crop = crop_at_world(image, shifted, SPEC)
    c = vol.bright_centroid(crop)
    np.testing.assert_allclose(c, [SPEC.size // 2 + 3, SPEC.size // 2 - 2, SPEC.size // 2 + 4], atol=0.5)


def test_border_is_padded_and_coverage_reported(vol):
    image, _ = vol.sphere_volume(direction=None)
    corner = image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0))
    crop = crop_at_world(image, corner, SPEC)
    h = SPEC.size // 2
    # everything before the first voxel centre on each axis is outside -> pad value
    assert np.all(crop[: h - 1] == -1000) and np.all(crop[:, : h - 1] == -1000) and np.all(crop[:, :, : h - 1] == -1000)
    assert np.all(crop[h:, h:, h:] == -800)  # inside: the volume's background
    cov = crop_coverage(image, corner, SPEC)
    assert 0.05 < cov < 0.2
    assert crop_coverage(image, image.TransformContinuousIndexToPhysicalPoint((32.0, 35.0, 12.0)), SPEC) == 1.0


def test_pad_value_follows_spec(vol):
    image, _ = vol.sphere_volume(direction=None)
    corner = image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0))
    crop = crop_at_world(image, corner, CropSpec(size=16, pad_hu=-1024))
    assert crop[0, 0, 0] == -1024


def test_outside_coordinate_is_an_error(vol):
    image, center = vol.sphere_volume()
    far = (center[0] + 500.0, center[1], center[2])
    assert not is_inside(image, far)
    with pytest.raises(OutsideVolumeError, match=r"ct\.mhd.*outside the volume"):
        crop_at_world(image, far, SPEC, source="ct.mhd")
    with pytest.raises(VolumeError, match="3 finite numbers"):
        crop_at_world(image, (np.nan, 0.0, 0.0), SPEC)


def test_point_in_outer_half_voxel_counts_as_inside(vol):
    """A thin VOI (2 slices) still contains a point half a slice past the last slice centre."""
    image, _ = vol.sphere_volume(shape_zyx=(2, 20, 20), direction=None, spacing=(0.7, 0.7, 2.5))
    edge = image.TransformContinuousIndexToPhysicalPoint((10.0, 10.0, 1.45))
    assert is_inside(image, edge)
    assert crop_at_world(image, edge, SPEC).shape == SPEC.shape
    beyond = image.TransformContinuousIndexToPhysicalPoint((10.0, 10.0, 1.6))
    assert not is_inside(image, beyond)


def test_image_from_array_matches_file_route(tmp_path, vol):
    image, center = vol.sphere_volume(direction=vol.ROTATED)
    arr = sitk.GetArrayFromImage(image)
    rebuilt = image_from_array(arr, image.GetSpacing(), image.GetOrigin(), np.asarray(image.GetDirection()).reshape(3, 3))
    np.testing.assert_array_equal(crop_at_world(rebuilt, center, SPEC), crop_at_world(image, center, SPEC))


@pytest.mark.parametrize("kwargs, message", [
    (dict(voxels=np.zeros((4, 4))), "shape"),
    (dict(voxels=np.zeros((0, 4, 4))), "empty"),
    (dict(spacing=(1.0, 1.0)), "spacing must have 3"),
    (dict(spacing=(1.0, 0.0, 1.0)), "invalid voxel spacing"),
    (dict(origin=(0.0, np.inf, 0.0)), "origin"),
    (dict(direction=np.diag([1.0, 2.0, 1.0])), "not orthonormal"),
    (dict(direction=[1, 0, 0]), "9 numbers"),
    (dict(voxels=np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 0.0)), "1 NaN/Inf"),
])
def test_image_from_array_rejects_bad_input(kwargs, message):
    args = dict(voxels=np.zeros((4, 4, 4), np.int16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=None)
    args.update(kwargs)
    with pytest.raises(VolumeError, match=message):
        image_from_array(args["voxels"], args["spacing"], args["origin"], args["direction"], source="request")


def test_nan_voxels_in_a_file_are_an_error(tmp_path):
    arr = np.full((6, 8, 8), -900.0, np.float32)
    arr[3, 4, 4] = np.nan
    arr[1, 1, 1] = np.inf
    # MetaImage keeps NaN (ITK's NIfTI reader turns NaN into 0 on its own)
    path = tmp_path / "nan.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(VolumeError, match=r"nan\.mhd: contains 2 NaN/Inf"):
        read_image_file(path)


def test_missing_corrupt_and_degenerate_files(tmp_path):
    with pytest.raises(VolumeError, match=r"nope\.nii\.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(VolumeError, match=r"corrupt\.nii\.gz: cannot be read"):
        read_image_file(bad)
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    sitk.WriteImage(img, str(tmp_path / "v.mhd"))
    (tmp_path / "v.raw").unlink()
    with pytest.raises(VolumeError, match=r"v\.mhd: its data file v\.raw is missing"):
        read_image_file(tmp_path / "v.mhd")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(VolumeError, match=r"flat\.nii\.gz: is 2-D"):
        read_image_file(tmp_path / "flat.nii.gz")


def test_mask_centroid_and_mask_crop(vol):
    image, center = vol.sphere_volume(direction=vol.ROTATED)
    mask = vol.sphere_mask(image, center, 4.0)
    c = mask_centroid_world(mask)
    np.testing.assert_allclose(c, center, atol=0.3)
    m = crop_mask_at_world(mask, c, SPEC)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    np.testing.assert_allclose(np.argwhere(m).mean(axis=0), [SPEC.size // 2] * 3, atol=0.5)


def test_empty_mask_is_an_error(vol):
    image, _ = vol.sphere_volume()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(EmptyMaskError, match=r"m\.nii\.gz: mask is empty"):
        mask_centroid_world(empty, source="m.nii.gz")


def test_crop_as_image_puts_the_centre_voxel_on_the_point(vol):
    image, center = vol.sphere_volume()
    crop = crop_at_world(image, center, SPEC)
    out = crop_as_image(crop.astype(np.float32), center, SPEC)
    h = SPEC.size // 2
    np.testing.assert_allclose(out.TransformIndexToPhysicalPoint((h, h, h)), center, atol=1e-6)
    # resampling the geometry-tagged crop again reproduces it (round trip through world space)
    again = crop_at_world(out, center, SPEC)
    np.testing.assert_array_equal(again, crop)


def test_fixed_field_of_view_box(vol):
    from naslung.data.crop import apply_fov, fov_box, parse_fov

    assert parse_fov("20,20,6") == (20.0, 20.0, 6.0) and parse_fov("10") == (10.0,) * 3 and parse_fov(8) == (8.0,) * 3
    for bad in ("a,b", "1,2", "0", [1, -2, 3]):
        with pytest.raises(ValueError, match="field of view"):
            parse_fov(bad)
    box = fov_box(SPEC, (10.0, 6.0, 4.0))  # x, y, z mm -> 11 x 7 x 5 voxels at 1 mm (centres within +-half)
    zs, ys, xs = np.nonzero(box)
    assert (zs.max() - zs.min() + 1, ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (5, 7, 11)
    assert box[SPEC.size // 2, SPEC.size // 2, SPEC.size // 2]
    image, center = vol.sphere_volume()
    crop = crop_at_world(image, center, SPEC)
    fixed = apply_fov(crop, SPEC, (10.0, 6.0, 4.0))
    assert np.all(fixed[~box] == -1000) and np.array_equal(fixed[box], crop[box])
    assert crop_coverage(image, center, SPEC, (10.0, 6.0, 4.0)) == pytest.approx(box.mean())


def test_crop_file_at_world_one_call(tmp_path, vol):
    from naslung.data.crop import crop_file_at_world

    image, center = vol.sphere_volume()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    crop = crop_file_at_world(str(tmp_path / "ct.nii.gz"), center, SPEC)
    np.testing.assert_array_equal(crop, crop_at_world(image, center, SPEC))


def test_vector_image_is_rejected(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "vec.mhd"))
    with pytest.raises(VolumeError, match=r"vec\.mhd: has 2 components"):
        read_image_file(tmp_path / "vec.mhd")
