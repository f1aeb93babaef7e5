"""NIfTI export of the crop and its maps on the crop's real world grid, for 3D Slicer / ITK-SNAP.

Geometry follows SimpleITK/ITK: LPS world millimetres, ``origin`` is the centre of voxel (0, 0, 0),
``direction`` the 3x3 row-major cosine matrix, arrays in (z, y, x) order. SimpleITK converts to the
RAS convention of the NIfTI header itself, so a map loaded over the original scan lands on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from naslung.explain.attribution import AttributionMap


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel array sits in the world (LPS mm)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_affine(cls, affine: Any) -> "Geometry":
        """From a 4x4 LPS affine mapping voxel (x, y, z, 1) indices to world mm."""
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4):
            raise ValueError(f"world affine must be 4x4, got shape {a.shape}")
        cols = a[:3, :3]
        spacing = np.linalg.norm(cols, axis=0)
        if (spacing <= 0).any():
            raise ValueError(f"world affine has a zero axis: {a.tolist()}")
        direction = cols / spacing
        return cls(tuple(float(v) for v in a[:3, 3]), tuple(float(v) for v in spacing),
                   tuple(float(v) for v in direction.ravel()))

    @classmethod
    def from_image(cls, image: Any) -> "Geometry":
        """From a SimpleITK image (e.g. the crop as resampled from the scan)."""
        return cls(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetDirection()))

    @classmethod
    def for_crop(cls, center_xyz: Sequence[float], spec: Any) -> "Geometry":
        """The grid :func:`naslung.data.crop.crop_at_world` resamples onto for ``center_xyz``."""
        from naslung.data.crop import crop_geometry

        origin, spacing, direction = crop_geometry(center_xyz, spec)
        return cls(tuple(origin), tuple(spacing), tuple(direction))

    @property
    def affine(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing)
        a[:3, 3] = self.origin
        return a

    def to_dict(self) -> dict[str, Any]:
        return {"origin_lps_mm": list(self.origin), "spacing_mm": list(self.spacing),
                "direction": list(self.direction), "affine_lps": self.affine.tolist()}


def to_image(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetOrigin([float(v) for v in geometry.origin])
    img.SetSpacing([float(v) for v in geometry.spacing])
    img.SetDirection([float(v) for v in geometry.direction])
    return img


def export_nifti(out_dir: str | Path, crop_hu: np.ndarray, maps: Sequence[AttributionMap],
                 geometry: Geometry) -> dict[str, Path]:
    """Write ``crop.nii.gz`` (int16 HU) and ``map_<key>.nii.gz`` (float32 [0, 1]) on ``geometry``.

    Returns {"crop": path, <map key>: path, ...}.
    """
    import SimpleITK as sitk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    crop = np.asarray(crop_hu)
    paths: dict[str, Path] = {}
    p = out / "crop.nii.gz"
    sitk.WriteImage(to_image(crop.astype(np.int16), geometry), str(p), useCompression=True)
    paths["crop"] = p
    for m in maps:
        if m.values.shape != crop.shape:
            raise ValueError(f"map {m.key} has shape {m.values.shape}, crop {crop.shape}")
        p = out / f"map_{m.key}.nii.gz"
        sitk.WriteImage(to_image(m.values.astype(np.float32), geometry), str(p), useCompression=True)
        paths[m.key] = p
    return paths
