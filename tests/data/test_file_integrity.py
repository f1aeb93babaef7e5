"""Cut or corrupt image and .npy files are refused with the file named -- never read as zeros.

ITK reads a truncated gzip stream or a short voxel block without complaint and zero-fills the rest;
these tests build such files from outside (cutting bytes off real files) and check every reader says so.
"""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.data.npyfile import NpyFileError, check_crop_shape, load_npy
from naslung.data.volume import VolumeError, read_image_file, read_volume


@pytest.fixture
def image(vol):
    img, _ = vol.sphere_volume(shape_zyx=(10, 40, 36), direction=None)
    return img


def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_intact_files_still_read(tmp_path, image):
    for name in ("a.nii.gz", "a.nii", "a.mhd", "a.mha"):
        sitk.WriteImage(image, str(tmp_path / name))
        got = read_image_file(tmp_path / name)
        assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(image)), name
    sitk.WriteImage(image, str(tmp_path / "z.mhd"), useCompression=True)
    assert np.array_equal(sitk.GetArrayFromImage(read_image_file(tmp_path / "z.mhd")), sitk.GetArrayFromImage(image))


def test_truncated_gzip_nifti_is_refused(tmp_path, image):
    p = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(p))
    _cut(p, 0.3)
    with pytest.raises(VolumeError, match=r"scan\.nii\.gz: is truncated: its gzip stream ends"):
        read_volume(p)


def test_corrupt_gzip_nifti_is_refused(tmp_path, image):
    p = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(p))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: deflate error or CRC mismatch
    p.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match=r"scan\.nii\.gz: is (corrupt|truncated)"):
        read_image_file(p)


@pytest.mark.parametrize("gz", [False, True])
def test_nifti_with_fewer_voxels_than_its_header_is_refused(tmp_path, image, gz):
    """A well-formed gzip stream (or a plain .nii) holding a cut NIfTI: voxel count against the header."""
    plain = tmp_path / "scan.nii"
    sitk.WriteImage(image, str(plain))
    _cut(plain, 0.6)
    p = plain
    if gz:
        p = tmp_path / "scan.nii.gz"
        p.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(VolumeError, match=r"is truncated: the header promises \d+ bytes .*the file holds \d+"):
        read_image_file(p)


def test_not_a_nifti_is_refused(tmp_path):
    p = tmp_path / "notes.nii"
    p.write_bytes(b"this is not an image" * 30)
    with pytest.raises(VolumeError, match="notes.nii: cannot be read: it is not a NIfTI file"):
        read_image_file(p)


def test_metaimage_with_short_raw_or_cut_zlib_is_refused(tmp_path, image):
    sitk.WriteImage(image, str(tmp_path / "a.mhd"))
    _cut(tmp_path / "a.raw", 0.5)
    with pytest.raises(VolumeError, match=r"a\.raw: is truncated: the header promises"):
        read_image_file(tmp_path / "a.mhd")
    sitk.WriteImage(image, str(tmp_path / "z.mhd"), useCompression=True)
    data_file = next(p for p in tmp_path.glob("z.*") if p.suffix != ".mhd")
    _cut(data_file, 0.5)
    with pytest.raises(VolumeError, match="is truncated: its zlib stream ends early"):
        read_image_file(tmp_path / "z.mhd")
    sitk.WriteImage(image, str(tmp_path / "b.mha"))
    _cut(tmp_path / "b.mha", 0.7)
    with pytest.raises(VolumeError, match=r"b\.mha: is truncated"):
        read_image_file(tmp_path / "b.mha")


def test_real_voi_cut_to_20kb_is_refused(shared_data, tmp_path):
    """The issue's case: the first 20 KB of a real 75 KB VOI read as 73 % zeros before."""
    src = shared_data / "lidc-voi" / "images" / "LIDC-IDRI-0007_R_1.nii.gz"
    if not src.is_file():
        pytest.skip("LIDC-IDRI-0007_R_1.nii.gz not in the shared data")
    p = tmp_path / src.name
    p.write_bytes(src.read_bytes()[:20_000])
    with pytest.raises(VolumeError, match="truncated"):
        read_volume(p)
    shutil.copy(src, tmp_path / "intact.nii.gz")
    assert read_volume(tmp_path / "intact.nii.gz").GetSize() == sitk.ReadImage(str(src)).GetSize()


# --------------------------------------------------------------------------- .npy
def test_npy_garbage_is_named_and_never_suggests_pickles(tmp_path):
    p = tmp_path / "crop.npy"
    p.write_bytes(b"\x80\x04garbage that is not an array" * 20)
    with pytest.raises(NpyFileError) as e:
        load_npy(p)
    assert str(p) in str(e.value) and "not a NumPy .npy file" in str(e.value)
    assert "pickle" not in str(e.value).lower()


def test_npy_truncated_object_and_trailing_bytes(tmp_path):
    a = np.arange(4096, dtype=np.int16).reshape(16, 16, 16)
    np.save(tmp_path / "ok.npy", a)
    assert np.array_equal(load_npy(tmp_path / "ok.npy"), a)
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:3000])
    with pytest.raises(NpyFileError, match=r"cut\.npy: is truncated: its header promises a \(16, 16, 16\) int16"):
        load_npy(tmp_path / "cut.npy")
    (tmp_path / "long.npy").write_bytes(data + b"\0" * 10)
    with pytest.raises(NpyFileError, match="10 unexpected bytes"):
        load_npy(tmp_path / "long.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NpyFileError, match="holds object values") as e:
        load_npy(tmp_path / "obj.npy")
    assert "pickle" not in str(e.value).lower()


@pytest.mark.parametrize("shape", [(1, 1, 1), (16, 16, 16), (200, 200, 200), (32, 32, 30)])
def test_crop_of_the_wrong_shape_is_refused(shape):
    arr = np.zeros(shape, np.int16)
    with pytest.raises(NpyFileError, match=rf"crop has shape {'x'.join(map(str, shape))}; the model takes 32x32x32"):
        check_crop_shape(arr, (32, 32, 32), "c.npy")
    check_crop_shape(np.zeros((32, 32, 32)), (32, 32, 32), "c.npy")
    with pytest.raises(NpyFileError, match="crops have shape 16x16x16"):
        check_crop_shape(np.zeros((3, 16, 16, 16)), (32, 32, 32), "c.npy", stack=True)


def test_prepare_skips_a_cut_voi_and_its_cut_mask_with_the_reason(tmp_path, vol):
    """prepare --source voi: a cut image or mask is skipped and reported, never cropped from zero-filled voxels."""
    from naslung.data.prepare import prepare_dataset
    from naslung.data.sources.base import SourceOptions
    from naslung.data.spec import CropSpec
    from test_voi_source import _write_voi_dir

    root = tmp_path / "voi"
    _write_voi_dir(root, vol, n_good=6)
    _cut(root / "images" / "P01_R_3.nii.gz", 0.4)   # no mask: centred on the world coordinate
    _cut(root / "masks" / "P02_R_4.nii.gz", 0.4)    # its mask is cut
    ds = prepare_dataset("voi", SourceOptions(input=root, spec=CropSpec(size=16), progress=False), folds=0)
    reasons = {s.item: s.reason for s in ds.skipped}
    assert "is truncated" in reasons["images/P01_R_3.nii.gz"]
    assert "P02_R_4.nii.gz: is truncated" in reasons["images/P02_R_4.nii.gz"]
    assert len(ds) == 4 and not {"P01_R_3", "P02_R_4"} & set(ds.ids)
