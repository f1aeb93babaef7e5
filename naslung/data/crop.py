"""Resample-and-crop a nodule cube at a world coordinate: the one crop function of training AND serving.

Only the cube around the point is computed: SimpleITK resamples the source image straight onto a
``spec.size``³ grid of ``spec.spacing_mm`` isotropic spacing centred on the point (identity
direction, so crop axes (z, y, x) run along world +z, +y, +x in LPS). Voxels outside the source get
``spec.pad_hu``. HU are interpolated linearly, masks by nearest neighbour. Voxel ``S // 2`` on each
axis sits exactly on the requested point (NAS-Lung's ``[c - S/2, c + S/2)`` convention).
No anti-alias smoothing is applied when downsampling (as in LUNA16/DeepLung preprocessing).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from naslung.data.spec import CropSpec, parse_fov  # noqa: F401  (parse_fov: re-exported)
from naslung.data.volume import EmptyMaskError, OutsideVolumeError, VolumeError, read_volume

_INT16 = np.iinfo(np.int16)


def crop_geometry(center_xyz: Sequence[float], spec: CropSpec) -> tuple[tuple[float, ...], tuple[float, ...],
                                                                         tuple[float, ...]]:
    """(origin, spacing, direction) of the crop grid centred on ``center_xyz`` (x, y, z order, LPS mm)."""
    c = np.asarray(center_xyz, dtype=float)
    origin = c - (spec.size // 2) * spec.spacing_mm
    return (tuple(float(v) for v in origin), (float(spec.spacing_mm),) * 3, tuple(np.eye(3).ravel().tolist()))


def crop_reference(center_xyz: Sequence[float], spec: CropSpec) -> sitk.Image:
    """An empty image on the crop grid (what the source is resampled onto)."""
    origin, spacing, direction = crop_geometry(center_xyz, spec)
    ref = sitk.Image([spec.size] * 3, sitk.sitkUInt8)
    ref.SetOrigin(origin)
    ref.SetSpacing(spacing)
    ref.SetDirection(direction)
    return ref


def crop_as_image(values: np.ndarray, center_xyz: Sequence[float], spec: CropSpec) -> sitk.Image:
    """Give a (S, S, S) array on the crop grid (a crop, an attribution map) its world geometry,
    e.g. to write it as NIfTI that overlays the source scan."""
    arr = np.asarray(values)
    if arr.shape != spec.shape:
        raise ValueError(f"array has shape {arr.shape}, the crop grid is {spec.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    origin, spacing, direction = crop_geometry(center_xyz, spec)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def continuous_index(image: sitk.Image, point_xyz: Sequence[float]) -> np.ndarray:
    """Continuous voxel index (x, y, z) of a world point."""
    return np.asarray(image.TransformPhysicalPointToContinuousIndex([float(v) for v in point_xyz]))


def is_inside(image: sitk.Image, point_xyz: Sequence[float]) -> bool:
    """Whether a world point lies within the volume's voxels (their full extent, half a voxel past
    the outer centres — so a VOI two slices deep still contains its nodule)."""
    ci = continuous_index(image, point_xyz)
    size = np.asarray(image.GetSize(), dtype=float)
    eps = 1e-6
    return bool(np.all(ci >= -0.5 - eps) and np.all(ci <= size - 0.5 + eps))


def world_extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (min, max) of the volume's voxel footprint."""
    size = np.asarray(image.GetSize())
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.where(bits, size - 0.5, -0.5)])
               for bits in np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).T.reshape(-1, 3).astype(bool)]
    pts = np.asarray(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _require_inside(image: sitk.Image, center_xyz: Sequence[float], source: str) -> None:
    c = np.asarray(center_xyz, dtype=float)
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise VolumeError(source, f"crop centre must be 3 finite numbers (x, y, z mm), got {center_xyz!r}")
    if not is_inside(image, c):
        lo, hi = world_extent(image)
        raise OutsideVolumeError(
            source, f"world coordinate ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) mm lies outside the volume "
                    f"(extent x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f}, z {lo[2]:.1f}..{hi[2]:.1f} mm)")


def crop_at_world(image: sitk.Image, center_xyz: Sequence[float], spec: CropSpec, *,
                  source: str = "image") -> np.ndarray:
    """HU cube (S, S, S) int16, axis order (z, y, x), centred on a world point (LPS mm), padded with
    ``spec.pad_hu`` (also outside ``spec.fov_mm``'s box when the spec has one). A centre outside the
    volume raises :class:`OutsideVolumeError`."""
    _require_inside(image, center_xyz, source)
    out = sitk.Resample(image, crop_reference(center_xyz, spec), sitk.Transform(), sitk.sitkLinear,
                        float(spec.pad_hu), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)
    crop = np.clip(np.rint(arr), _INT16.min, _INT16.max).astype(np.int16)
    return spec.apply_fov(crop) if spec.fov_mm is not None else crop


def crop_mask_at_world(mask: sitk.Image, center_xyz: Sequence[float], spec: CropSpec, *,
                       source: str = "mask") -> np.ndarray:
    """Binary mask cube (S, S, S) uint8 on the same grid as :func:`crop_at_world` (nearest neighbour, 0 outside)."""
    _require_inside(mask, center_xyz, source)
    binary = mask > 0  # UInt8 0/1
    out = sitk.Resample(binary, crop_reference(center_xyz, spec), sitk.Transform(), sitk.sitkNearestNeighbor,
                        0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out).astype(np.uint8)


def crop_coverage(image: sitk.Image, center_xyz: Sequence[float], spec: CropSpec,
                  fov_xyz_mm: Sequence[float] | None = None) -> float:
    """Fraction of crop voxels that fall inside the source volume (1.0 = no padding) — and inside
    the ``fov_xyz_mm`` box when one is given. Lets a dataset report how much of each crop is
    -1000 HU border (the VOI shortcut)."""
    s = spec.size
    idx = (np.arange(s) - s // 2) * spec.spacing_mm
    zz, yy, xx = np.meshgrid(idx, idx, idx, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1) + np.asarray(center_xyz, dtype=float)
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    ci = (pts - np.asarray(image.GetOrigin())) @ d / np.asarray(image.GetSpacing())  # D orthonormal: D^-1 = D^T
    size = np.asarray(image.GetSize(), dtype=float)
    inside = np.all((ci >= -0.5 - 1e-6) & (ci <= size - 0.5 + 1e-6), axis=1)
    if fov_xyz_mm is not None:
        inside &= fov_box(spec, fov_xyz_mm).ravel()
    return float(inside.mean())


def fov_box(spec: CropSpec, fov_xyz_mm: Sequence[float]) -> np.ndarray:
    """Bool (S, S, S) mask of the crop voxels within a centred box of ``fov_xyz_mm`` (x, y, z mm)."""
    return dataclasses.replace(spec, fov_mm=tuple(fov_xyz_mm)).fov_mask()


def apply_fov(crop: np.ndarray, spec: CropSpec, fov_xyz_mm: Sequence[float]) -> np.ndarray:
    """Set everything outside a fixed centred box to ``spec.pad_hu``: the same field of view for
    every crop, one guard against the VOI-border shortcut (a VOI smaller than the box still shows
    its own border; ``fov_fraction`` tells which). ``CropSpec(fov_mm=...)`` does the same."""
    return dataclasses.replace(spec, fov_mm=tuple(fov_xyz_mm)).apply_fov(crop)


def mask_centroid_world(mask: sitk.Image, source: str = "mask") -> tuple[float, float, float]:
    """World coordinate (x, y, z LPS mm) of the centre of mass of a mask's foreground (> 0)."""
    arr = sitk.GetArrayViewFromImage(mask)
    zyx = np.argwhere(arr > 0)
    if len(zyx) == 0:
        raise EmptyMaskError(source, f"mask is empty (no voxel > 0 in {arr.shape[::-1]} voxels)")
    cz, cy, cx = zyx.mean(axis=0)
    p = mask.TransformContinuousIndexToPhysicalPoint([float(cx), float(cy), float(cz)])
    return (float(p[0]), float(p[1]), float(p[2]))


def crop_file_at_world(path: str, center_xyz: Sequence[float], spec: CropSpec) -> np.ndarray:
    """Read a volume (file or DICOM directory) and crop it: the one-call form for scripts."""
    return crop_at_world(read_volume(path), center_xyz, spec, source=str(path))
