"""``--source voi``: NIfTI volumes of interest with masks and a ``labels.csv`` (format of
``shared/data/lidc-voi``, see its README).

Each labelled row becomes one crop: the VOI is resampled to the crop spec, centred on its mask's
centroid (or the row's ``world_x/y/z`` when there is no mask) and padded with -1000 HU. Rows whose
label column is empty are dropped and counted (``meta["unlabelled_dropped"]``); a row whose files
are missing or broken becomes a ``Skipped`` with its reason and the rest are still prepared.
``fov_fraction`` in the manifest is the share of the crop that came from the VOI (the rest is
padding): the VOI-border shortcut can be checked against it. ``options.extra["fov_mm"]``
(``naslung prepare --fov-mm X,Y,Z``) pads everything outside a fixed centred box, so every crop
shows the same field of view wherever its VOI is large enough (``fov_fraction`` then equals the
box's share of the crop).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from naslung.data.crop import crop_at_world, crop_coverage, mask_centroid_world, parse_fov
from naslung.data.dataset import PreparedDataset, Skipped
from naslung.data.sources.base import SourceOptions
from naslung.data.volume import VolumeError, read_image_file

log = logging.getLogger(__name__)

# Default input: $NASLUNG_SHARED_DATA/lidc-voi, else ../shared/data/lidc-voi beside the repository.
DEFAULT_INPUT = Path(os.environ.get("NASLUNG_SHARED_DATA",
                                    Path(__file__).resolve().parents[3].parent / "shared" / "data")) / "lidc-voi"
# labels.csv columns copied into the manifest (when present) besides the required ones.
KEEP_COLUMNS = ("file", "mask_file", "seriesuid", "nodule_id", "world_x", "world_y", "world_z",
                "naslung_ratings", "label_naslung", "label_majority", "malignancy_mode", "n_readers",
                "spiculation", "lobulation", "margin", "sphericity", "texture", "calcification", "subtlety")


def _parse_label(value: str | None) -> int | None:
    v = (value or "").strip()
    if v == "" or v.lower() in ("nan", "na", "none"):
        return None
    f = float(v)
    if f not in (0.0, 1.0):
        raise ValueError(f"label {v!r} is not 0 or 1")
    return int(f)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def prepare(options: SourceOptions) -> PreparedDataset:
    root = Path(options.input) if options.input is not None else DEFAULT_INPUT
    table = Path(options.labels_csv) if options.labels_csv is not None else root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: VOI label table not found (expected labels.csv in {root})")
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    col = options.label_column
    for need in (col, "file"):
        if need not in columns:
            raise ValueError(f"{table}: no column {need!r} (columns: {', '.join(columns)})")
    spec = options.spec
    fov = parse_fov(options.extra["fov_mm"]) if options.extra.get("fov_mm") else spec.fov_mm
    if fov is not None:
        # Recorded in the dataset's crop spec, so training, bundles and the server apply the same box.
        spec = dataclasses.replace(spec, fov_mm=fov)

    labelled: list[tuple[int, dict[str, str], int]] = []
    skipped: list[Skipped] = []
    unlabelled = 0
    for i, r in enumerate(rows):
        try:
            y = _parse_label(r.get(col))
        except ValueError as e:
            skipped.append(Skipped(r.get("file") or f"row {i + 2}", f"{table.name} row {i + 2}: {e}"))
            continue
        if y is None:
            unlabelled += 1
            continue
        labelled.append((i, r, y))
    if unlabelled:
        log.info("%s: %d rows without %s dropped", table, unlabelled, col)
    if options.limit is not None:
        labelled = labelled[: options.limit]

    crops: list[np.ndarray] = []
    out_rows: list[dict[str, Any]] = []
    items = labelled
    if options.progress:
        from tqdm import tqdm

        items = tqdm(labelled, desc="voi", unit="nodule", leave=False)
    for i, r, y in items:
        name = r["file"].strip()
        try:
            crop, info = _crop_one(root, r, spec, fov)
        except VolumeError as e:
            skipped.append(Skipped(name, str(e)))
            log.warning("skipped %s", e)
            continue
        stem = Path(name).name
        for suffix in (".gz", ".nii", ".mhd", ".nrrd"):
            stem = stem.removesuffix(suffix)
        row: dict[str, Any] = {
            "id": stem,
            "patient_id": (r.get("patient_id") or "").strip() or stem,
            "label": y,
            "diameter_mm": _float(r.get("diameter_mm")),
            "source": "voi",
        }
        row.update({k: r[k] for k in KEEP_COLUMNS if k in r})
        row.update(info)
        crops.append(crop)
        out_rows.append(row)

    arr = np.stack(crops) if crops else np.zeros((0, *spec.shape), dtype=np.int16)
    meta = {"input": str(root), "labels_csv": str(table), "label_column": col, "rows": len(rows),
            "unlabelled_dropped": unlabelled, "fov_mm": list(fov) if fov else None}
    log.info("voi: %d crops, %d skipped, %d unlabelled dropped", len(out_rows), len(skipped), unlabelled)
    return PreparedDataset(arr, out_rows, spec, "voi", skipped, meta)


def _crop_one(root: Path, r: dict[str, str], spec, fov=None) -> tuple[np.ndarray, dict[str, Any]]:
    image_path = root / r["file"].strip()
    image = read_image_file(image_path)
    mask_name = (r.get("mask_file") or "").strip()
    if mask_name:
        mask_path = root / mask_name
        mask = read_image_file(mask_path)
        center = mask_centroid_world(mask, source=str(mask_path))
        center_from = "mask"
    else:
        center = tuple(_float(r.get(k)) for k in ("world_x", "world_y", "world_z"))
        if not all(math.isfinite(v) for v in center):
            raise VolumeError(image_path, "no mask and no valid world_x/y/z to centre the crop on")
        center_from = "world"
    crop = crop_at_world(image, center, spec, source=str(image_path))  # applies spec.fov_mm
    info = {
        "center_x": round(center[0], 3), "center_y": round(center[1], 3), "center_z": round(center[2], 3),
        "center_from": center_from,
        "fov_fraction": round(crop_coverage(image, center, spec, fov), 4),
    }
    return crop, info
