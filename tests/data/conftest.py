"""Factories for small CT-like volumes with a bright sphere planted at a known world coordinate."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pytest
import SimpleITK as sitk

# A non-trivial geometry: anisotropic voxels and a direction that is a rotation about z plus an
# axis flip (det -1 is legal for DICOM/NIfTI direction cosines; it catches index/world mix-ups).
_TH = np.deg2rad(25.0)
ROTATED = (np.array([[np.cos(_TH), -np.sin(_TH), 0.0],
                     [np.sin(_TH), np.cos(_TH), 0.0],
                     [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0]))


def sphere_volume(shape_zyx: Sequence[int] = (24, 70, 64), spacing: Sequence[float] = (0.7, 0.8, 2.0),
                  origin: Sequence[float] = (-120.0, 35.0, -310.0), direction: np.ndarray | None = ROTATED,
                  center_index_xyz: Sequence[float] = (30.3, 36.6, 11.4), radius_mm: float = 5.0,
                  background: float = -800.0, inside: float = 60.0,
                  dtype=np.int16) -> tuple[sitk.Image, tuple[float, float, float]]:
    """A volume of ``background`` HU with a ``radius_mm`` sphere of ``inside`` HU; returns
    (image, world centre of the sphere)."""
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    img = sitk.Image([int(s) for s in shape_zyx[::-1]], sitk.sitkInt16)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection(tuple(d.ravel()))
    center = np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(c) for c in center_index_xyz]))
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    idx = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3) * np.asarray(spacing, dtype=float)
    world = idx @ d.T + np.asarray(origin, dtype=float)
    dist = np.linalg.norm(world - center, axis=1).reshape(tuple(shape_zyx))
    arr = np.where(dist <= radius_mm, inside, background).astype(dtype)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out, (float(center[0]), float(center[1]), float(center[2]))


def sphere_mask(image: sitk.Image, center: Sequence[float], radius_mm: float) -> sitk.Image:
    """A uint8 mask on ``image``'s grid: voxels within ``radius_mm`` of ``center``."""
    size = image.GetSize()
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    idx = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3) * np.asarray(image.GetSpacing())
    world = idx @ d.T + np.asarray(image.GetOrigin())
    inside = (np.linalg.norm(world - np.asarray(center), axis=1) <= radius_mm).reshape(size[::-1])
    m = sitk.GetImageFromArray(inside.astype(np.uint8))
    m.CopyInformation(image)
    return m


def bright_centroid(crop: np.ndarray, threshold: float = -370.0) -> np.ndarray:
    """Centre of mass (z, y, x voxel index) of the crop's voxels above ``threshold`` HU."""
    pts = np.argwhere(crop > threshold)
    assert len(pts), "no bright voxel in the crop"
    return pts.mean(axis=0)


def write_dicom_series(image: sitk.Image, directory: Path, series_uid: str = "1.2.826.0.1.3680043.8.498.1",
                       positions_z: Sequence[float] | None = None) -> list[Path]:
    """Write ``image`` as a DICOM series (one file per z slice). ``positions_z`` overrides each
    slice's z position (to build series with gaps or mixed spacing)."""
    directory.mkdir(parents=True, exist_ok=True)
    img = sitk.Cast(image, sitk.sitkInt16)
    d = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        pos = list(img.TransformIndexToPhysicalPoint((0, 0, k)))
        if positions_z is not None:
            pos = list(np.asarray(img.GetOrigin()) + np.asarray(d).reshape(3, 3)[:, 2] * positions_z[k])
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.0",
            "0020|000e": series_uid,
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0013": str(k + 1),
            "0028|1052": "0",
            "0028|1053": "1",
            "0010|0020": "TEST-PATIENT",
        }
        for t, v in tags.items():
            sl.SetMetaData(t, v)
        path = directory / f"slice{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        files.append(path)
    return files


@pytest.fixture
def vol() -> SimpleNamespace:
    """The helpers above, for tests (conftest modules are not importable by name)."""
    return SimpleNamespace(sphere_volume=sphere_volume, sphere_mask=sphere_mask, bright_centroid=bright_centroid,
                           write_dicom_series=write_dicom_series, ROTATED=ROTATED)
