"""Reading CT volumes (NIfTI, MetaImage ``.mhd/.raw``, DICOM series) into validated SimpleITK images.

Every reader ends in :func:`validate_image`, so whatever reaches the crop code is a 3-D scalar image
with positive spacing, an orthonormal direction and only finite voxels. Problems raise
:class:`VolumeError`, whose message names the file and the problem; dataset sources catch it per
item, record a ``Skipped`` and go on.

Conventions (SimpleITK's, which are LUNA16's): world coordinates are LPS millimetres; ``spacing``
and ``origin`` are given in (x, y, z) order; ``direction`` is the row-major 3x3 matrix whose
*columns* are the world directions of the x, y, z index axes; voxel arrays are (z, y, x).
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr")

# DICOM tags read from each slice header to check a series before trusting it.
_TAG_POSITION = "0020|0032"     # Image Position (Patient)
_TAG_ORIENTATION = "0020|0037"  # Image Orientation (Patient)
_TAG_PIXEL_SPACING = "0028|0030"
_TAG_ROWS = "0028|0010"
_TAG_COLUMNS = "0028|0011"


class VolumeError(ValueError):
    """A CT volume (or mask) is missing, unreadable or unusable. ``source`` names it, ``problem`` says why."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class OutsideVolumeError(VolumeError):
    """A requested world coordinate lies outside the volume."""


class EmptyMaskError(VolumeError):
    """A nodule mask has no foreground voxel."""


# --------------------------------------------------------------------------- validation
def validate_image(image: sitk.Image, source: str | Path = "image", *, check_finite: bool = True) -> sitk.Image:
    """Reject images the crop code cannot trust: not 3-D, multi-component, empty, bad geometry, NaN/Inf."""
    if image.GetDimension() != 3:
        raise VolumeError(source, f"is {image.GetDimension()}-D; a 3-D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(source, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                                  "a scalar (HU) volume is needed")
    size = image.GetSize()
    if min(size) < 1:
        raise VolumeError(source, f"is empty (size {size})")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise VolumeError(source, f"has invalid voxel spacing {tuple(spacing)} mm")
    origin = np.asarray(image.GetOrigin(), dtype=float)
    if not np.all(np.isfinite(origin)):
        raise VolumeError(source, f"has a non-finite origin {tuple(origin)}")
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise VolumeError(source, f"has a direction matrix that is not orthonormal: {tuple(d.ravel())}")
    if check_finite and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise VolumeError(source, f"contains {bad} NaN/Inf voxel(s) of {np.size(arr)}")
    return image


# --------------------------------------------------------------------------- readers
def read_volume(path: str | Path, *, series_uid: str | None = None) -> sitk.Image:
    """Read a CT volume: a DICOM series directory, or a NIfTI / MetaImage / NRRD file. Validated."""
    p = Path(path)
    if not p.exists():
        raise VolumeError(p, "file not found")
    if p.is_dir():
        return read_dicom_series(p, series_uid=series_uid)
    return read_image_file(p)


def read_image_file(path: str | Path) -> sitk.Image:
    """Read one image file (NIfTI ``.nii[.gz]``, ``.mhd/.raw``, ``.mha``, ``.nrrd``) and validate it."""
    p = Path(path)
    if not p.is_file():
        raise VolumeError(p, "file not found" if not p.exists() else "is not a regular file")
    if p.suffix.lower() == ".mhd":
        _check_mhd_data_file(p)
    check_image_file_integrity(p)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise VolumeError(p, f"cannot be read as an image ({_first_line(e)})") from None
    return validate_image(image, p)


# --------------------------------------------------------------------------- integrity
# ITK reads a truncated gzip stream or a short voxel block without complaint and fills the rest
# with zeros (a cut .nii.gz came back 73 % zeros = 0 HU, and the model answered with confidence).
# So every image file is checked before ITK sees it: a compressed stream must decompress to its
# end with a matching CRC, and the voxel bytes must be as many as the header's dimensions say.
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _gunzip_checked(p: Path, keep: int = 0) -> tuple[int, bytes]:
    """(decompressed size, its first ``keep`` bytes); VolumeError when the stream is cut or corrupt."""
    import gzip
    import zlib

    n, head = 0, b""
    try:
        with gzip.open(p, "rb") as f:
            while True:
                block = f.read(_CHUNK)
                if not block:
                    break
                if len(head) < keep:
                    head += block[:keep - len(head)]
                n += len(block)
    except EOFError:
        raise VolumeError(p, f"is truncated: its gzip stream ends before its end marker ({p.stat().st_size} "
                             f"bytes on disk); the file was cut short (an interrupted copy or download?)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise VolumeError(p, f"is corrupt and cannot be read: its gzip stream does not decompress ({e})") from None
    return n, head


def _nifti_expected_bytes(head: bytes, source: Path) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1/2 header, or None when ``head`` is not a NIfTI header."""
    import struct

    if len(head) < 4:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
        if sizeof_hdr == 348 and len(head) >= 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            (bitpix,) = struct.unpack(endian + "h", head[72:74])
            (vox_offset,) = struct.unpack(endian + "f", head[108:112])
            break
        if sizeof_hdr == 540 and len(head) >= 540:
            (bitpix,) = struct.unpack(endian + "h", head[14:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            (vox_offset,) = struct.unpack(endian + "q", head[168:176])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8:
        raise VolumeError(source, f"has an invalid NIfTI header (dim[0] = {ndim}, bitpix = {bitpix})")
    n_vox = 1
    for d in dims[1:ndim + 1]:
        if d < 0:
            raise VolumeError(source, f"has an invalid NIfTI header (dimensions {dims[1:ndim + 1]})")
        n_vox *= max(int(d), 1)
    return max(int(vox_offset), sizeof_hdr) + n_vox * (bitpix // 8)


def _short_voxels(p: Path, have: int, need: int, what: str) -> VolumeError:
    return VolumeError(p, f"is truncated: the header promises {need} bytes of {what}, the file holds {have} "
                          f"({100 * have / max(need, 1):.0f} %); reading it would fill the rest with zeros")


def _mhd_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _check_metaimage(p: Path) -> None:
    """``.mhd`` + data file, or ``.mha`` with inline data: voxel bytes (or the zlib stream) complete."""
    import zlib

    if p.suffix.lower() == ".mha":
        with open(p, "rb") as f:
            header = b""
            while True:
                line = f.readline()
                if not line:
                    return  # no data line: ITK will say what is wrong
                header += line
                if line.split(b"=")[0].strip() == b"ElementDataFile":
                    break
            offset = f.tell()
        fields = _mhd_fields(header.decode("latin-1"))
        if fields.get("ElementDataFile", "").upper() != "LOCAL":
            return
        data_path, data_offset = p, offset
    else:
        fields = _mhd_fields(p.read_text(errors="replace"))
        value = fields.get("ElementDataFile", "")
        if value.upper() in ("LOCAL", "LIST") or "%" in value or not value:
            return
        data_path, data_offset = p.parent / value, int(fields.get("HeaderSize", "0") or 0)
        if data_offset < 0:
            return  # -1: "data at the end of the file"; nothing to check against
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        n_comp = int(fields.get("ElementNumberOfChannels", "1") or 1)
        elem = _MET_BYTES[fields.get("ElementType", "").upper()]
    except (ValueError, KeyError):
        return  # an unusual header: ITK's own error is the best message
    need = elem * n_comp
    for d in dims:
        need *= d
    size = data_path.stat().st_size - data_offset
    if fields.get("CompressedData", "False").lower() == "true":
        d = zlib.decompressobj()
        got = 0
        with open(data_path, "rb") as f:
            f.seek(data_offset)
            try:
                while not d.eof:
                    block = f.read(_CHUNK)
                    if not block:
                        break
                    got += len(d.decompress(block))
            except zlib.error as e:
                raise VolumeError(data_path, f"is corrupt and cannot be read: its zlib stream does not decompress ({e})") from None
        if not d.eof:
            raise VolumeError(data_path, f"is truncated: its zlib stream ends early ({got} of {need} bytes "
                                         f"of voxels decompressed)")
        if got < need:
            raise _short_voxels(data_path, got, need, "voxels")
    elif size < need:
        raise _short_voxels(data_path, max(size, 0), need, "voxels")


def check_image_file_integrity(path: str | Path) -> None:
    """Refuse a cut or corrupt image file before ITK reads it (ITK would zero-fill the missing voxels).

    * any gzip file (``.nii.gz``, gzip-encoded NRRD, ...): the whole stream decompresses, to its end, CRC ok;
    * NIfTI-1/2 (plain or gzipped): the voxel bytes are at least ``vox_offset + prod(dim) * bitpix / 8``;
    * MetaImage (``.mhd`` + data file, ``.mha``): raw voxel bytes, or the zlib stream, complete.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic[:2] == _GZIP_MAGIC:
            size, head = _gunzip_checked(p, keep=544)
        elif p.suffix.lower() in (".mhd", ".mha"):
            _check_metaimage(p)
            return
        else:
            size = p.stat().st_size
            with open(p, "rb") as f:
                head = f.read(544)
    except OSError as e:
        raise VolumeError(p, f"cannot be read ({e.strerror or e})") from None
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz", ".gz")):
        need = _nifti_expected_bytes(head, p)
        if need is None:
            if name.endswith((".nii", ".nii.gz")):
                raise VolumeError(p, "cannot be read: it is not a NIfTI file (no NIfTI-1/2 header)")
            return
        if size < need:
            raise _short_voxels(p, size, need, "header + voxels" if magic[:2] != _GZIP_MAGIC
                                else "header + voxels (decompressed)")


def _check_mhd_data_file(p: Path) -> None:
    """A ``.mhd`` header whose ``.raw`` is missing gives an obscure ITK error; say it plainly."""
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise VolumeError(p, f"cannot be read ({e.strerror})") from None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            value = value.strip()
            if value.upper() not in ("LOCAL", "LIST") and "%" not in value:
                raw = p.parent / value
                if not raw.is_file():
                    raise VolumeError(p, f"its data file {raw.name} is missing")
            return
    raise VolumeError(p, "is not a MetaImage header (no ElementDataFile line)")


def read_dicom_series(directory: str | Path, *, series_uid: str | None = None,
                      rtol: float = 0.05, atol_mm: float = 0.01) -> sitk.Image:
    """Read one DICOM series from a directory, after checking its slices form a regular volume.

    Checks, each a :class:`VolumeError` naming the directory (and the slice file where one is to
    blame): no series / unknown series UID, unreadable slice, differing in-plane size, pixel
    spacing or orientation, duplicate slice positions, missing slices (a gap that is a multiple of
    the usual slice distance) and mixed slice spacing. ``rtol``/``atol_mm`` bound how far a slice
    distance may stray from the median (real scanners round positions to ~0.001 mm).
    When a directory holds several series and none is named, the one with most slices is read.
    """
    d = Path(directory)
    if not d.is_dir():
        raise VolumeError(d, "DICOM directory not found")
    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ())
    except RuntimeError as e:
        raise VolumeError(d, f"cannot be scanned for DICOM series ({_first_line(e)})") from None
    if not uids:
        raise VolumeError(d, "contains no readable DICOM series")
    files_by_uid = {u: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), u)) for u in uids}
    if series_uid is not None:
        if series_uid not in files_by_uid:
            raise VolumeError(d, f"has no DICOM series {series_uid} (found: {', '.join(uids)})")
        uid = series_uid
    else:
        uid = max(uids, key=lambda u: len(files_by_uid[u]))
        if len(uids) > 1:
            log.warning("%s holds %d DICOM series; reading %s (%d slices)", d, len(uids), uid,
                        len(files_by_uid[uid]))
    files = files_by_uid[uid]
    _check_dicom_slices(d, files, rtol=rtol, atol_mm=atol_mm)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)  # rescale slope/intercept applied -> HU
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise VolumeError(d, f"DICOM series {uid} cannot be read ({_first_line(e)})") from None
    return validate_image(image, d)


def _check_dicom_slices(d: Path, files: Sequence[str], *, rtol: float, atol_mm: float) -> None:
    # pydicom, not GDCM, for this pass: GDCM silently zero-fills a slice whose pixel data is cut short.
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as e:
            raise VolumeError(f, f"DICOM slice of the series in {d} is unreadable ({e})") from None
        if "PixelData" not in ds:
            raise VolumeError(f, f"DICOM slice of the series in {d} has no pixel data")
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is None or not ts.is_compressed:
            expected = (int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1))
                        * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("BitsAllocated", 16)) // 8)
            if len(ds.PixelData) < expected:
                raise VolumeError(f, f"DICOM slice of the series in {d} is truncated: {len(ds.PixelData)} of "
                                     f"{expected} bytes of pixel data")
        headers.append({
            _TAG_ROWS: str(ds.get("Rows")), _TAG_COLUMNS: str(ds.get("Columns")),
            _TAG_PIXEL_SPACING: "\\".join(f"{float(v):g}" for v in ds.get("PixelSpacing", []) or []) or None,
            _TAG_POSITION: "\\".join(str(float(v)) for v in ds.get("ImagePositionPatient", []) or []) or None,
            _TAG_ORIENTATION: "\\".join(str(float(v)) for v in ds.get("ImageOrientationPatient", []) or []) or None,
        })
    if len(files) < 2:
        return  # a single slice: nothing to compare (validate_image still checks the result)

    def consistent(tag: str, what: str) -> None:
        values = Counter(h[tag].strip() if h[tag] else None for h in headers)
        if len(values) > 1:
            common = values.most_common(1)[0][0]
            odd = next(f for f, h in zip(files, headers) if (h[tag].strip() if h[tag] else None) != common)
            raise VolumeError(d, f"mixed {what} in one series: {dict(values)} (e.g. {Path(odd).name})")

    consistent(_TAG_ROWS, "slice rows")
    consistent(_TAG_COLUMNS, "slice columns")
    consistent(_TAG_PIXEL_SPACING, "in-plane pixel spacing")
    try:
        orient = np.array([float(v) for v in headers[0][_TAG_ORIENTATION].split("\\")])
        positions = np.array([[float(v) for v in h[_TAG_POSITION].split("\\")] for h in headers])
        orients = np.array([[float(v) for v in h[_TAG_ORIENTATION].split("\\")] for h in headers])
    except (AttributeError, ValueError):
        raise VolumeError(d, "a slice lacks a valid Image Position / Orientation (Patient)") from None
    if not np.allclose(orients, orient, atol=1e-4):
        raise VolumeError(d, "mixed slice orientations in one series")
    normal = np.cross(orient[:3], orient[3:])
    z = np.sort(positions @ normal)
    gaps = np.diff(z)
    if np.any(gaps < atol_mm):
        i = int(np.argmin(gaps))
        raise VolumeError(d, f"duplicate slice position at {z[i]:.3f} mm along the slice normal")
    step = float(np.median(gaps))
    tol = max(atol_mm, rtol * step)
    off = np.abs(gaps - step) > tol
    if not np.any(off):
        return
    ratio = gaps[off] / step
    if np.allclose(ratio, np.round(ratio), atol=rtol) and np.all(np.round(ratio) >= 2):
        n_missing = int(np.sum(np.round(ratio) - 1))
        i = int(np.flatnonzero(off)[0])
        raise VolumeError(d, f"{n_missing} missing slice(s): gap of {gaps[i]:.3f} mm after the slice at "
                             f"{z[i]:.3f} mm, where slices are {step:.3f} mm apart")
    found = sorted({round(float(g), 3) for g in gaps})
    raise VolumeError(d, f"mixed slice spacing in one series: distances {found[:6]} mm")


# --------------------------------------------------------------------------- arrays
def image_from_array(voxels: np.ndarray, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0),
                     direction: Sequence[float] | np.ndarray | None = None, *,
                     source: str = "array") -> sitk.Image:
    """Wrap a (z, y, x) voxel array with its geometry (spacing/origin in x, y, z order, LPS mm).

    ``direction``: 9 numbers (row-major 3x3, as ``sitk.Image.GetDirection``) or a 3x3 array; None =
    identity. This is how the server turns a request's raw voxels into the same image the readers
    produce, so both go through one crop function.
    """
    arr = np.asarray(voxels)
    if arr.ndim != 3:
        raise VolumeError(source, f"voxel array has shape {arr.shape}; (z, y, x) is needed")
    if arr.size == 0:
        raise VolumeError(source, f"voxel array is empty (shape {arr.shape})")
    if arr.dtype.kind not in "iuf" or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise VolumeError(source, f"contains {bad} NaN/Inf voxel(s) of {arr.size}")
    spacing_t = _triple(spacing, "spacing", source)
    origin_t = _triple(origin, "origin", source)
    if direction is None:
        dir_t = tuple(np.eye(3).ravel())
    else:
        dmat = np.asarray(direction, dtype=float)
        if dmat.size != 9:
            raise VolumeError(source, f"direction must have 9 numbers (3x3), got {dmat.size}")
        dir_t = tuple(float(v) for v in dmat.ravel())
    if not all(np.isfinite(spacing_t)) or min(spacing_t) <= 0:
        raise VolumeError(source, f"has invalid voxel spacing {spacing_t} mm")
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetSpacing(spacing_t)
    image.SetOrigin(origin_t)
    dm = np.asarray(dir_t).reshape(3, 3)
    if not np.allclose(dm.T @ dm, np.eye(3), atol=1e-3):
        raise VolumeError(source, f"has a direction matrix that is not orthonormal: {dir_t}")
    image.SetDirection(dir_t)
    return validate_image(image, source, check_finite=False)


def _triple(values: Sequence[float], what: str, source: str) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float).ravel()
    if v.size != 3:
        raise VolumeError(source, f"{what} must have 3 numbers (x, y, z), got {v.size}")
    if not np.all(np.isfinite(v)):
        raise VolumeError(source, f"{what} {tuple(v)} is not finite")
    return (float(v[0]), float(v[1]), float(v[2]))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK messages start with a file:line location; the last informative line says what went wrong.
    return (lines[-1] if lines else type(e).__name__)[:300]
