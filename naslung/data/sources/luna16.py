"""``--source luna16``: LUNA16 ``.mhd/.raw`` volumes + a label table with world coordinates.

Input: a directory holding ``<seriesuid>.mhd`` (+ ``.raw``) files, directly or in ``subset0`` ..
``subset9`` subfolders. Labels: a CSV in the format of ``annotationdetclssgm_doctor.csv``
(``seriesuid, coordX, coordY, coordZ, diameter_mm, malignant``, then each reader's malignancy
rating, a variable number of unnamed columns). Given via ``--labels``, else looked for in the input
directory. Patient ids come from ``LIDC-IDRI-mappingLUNA16`` (``--mapping``, or the file beside the
label table) when present, else the series UID stands in for the patient.

Each volume is read once for all its nodules. The subset folder goes into the manifest column
``subset`` so that folds can follow LUNA16's subsets (``naslung prepare --fold-by-subset``), as
NAS-Lung did. A nodule whose volume is absent or broken, or whose coordinate is outside its
volume, becomes a ``Skipped`` with the reason.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from naslung.data.crop import crop_at_world, crop_coverage
from naslung.data.dataset import PreparedDataset, Skipped
from naslung.data.sources.base import SourceOptions, require_input_dir
from naslung.data.volume import VolumeError, read_image_file

log = logging.getLogger(__name__)

LABEL_FILE = "annotationdetclssgm_doctor.csv"
MAPPING_FILE = "LIDC-IDRI-mappingLUNA16"
_SUBSET = re.compile(r"^subset\d+$")


def find_volumes(root: Path) -> dict[str, tuple[Path, str]]:
    """seriesuid -> (.mhd path, subset folder name or "") for every ``.mhd`` under ``root``."""
    found: dict[str, tuple[Path, str]] = {}
    for p in sorted(root.rglob("*.mhd")):
        subset = next((part for part in reversed(p.relative_to(root).parts[:-1]) if _SUBSET.match(part)), "")
        uid = p.name[: -len(".mhd")]
        if uid in found:
            log.warning("%s: series %s found twice; keeping %s", root, uid, found[uid][0])
            continue
        found[uid] = (p, subset)
    return found


def read_mapping(path: Path) -> dict[str, str]:
    """seriesuid -> LIDC patient id from ``LIDC-IDRI-mappingLUNA16`` (whitespace separated, header line)."""
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0] != "PatientID":
                out[parts[2]] = parts[0]
    return out


def read_labels(path: Path) -> list[dict[str, Any]]:
    """Rows of a LUNA16 label table; trailing unnamed columns become ``ratings`` ("3;2;4")."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        need = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "malignant")
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(f"{path}: not a LUNA16 label table, columns {missing} missing (has {header})")
        n_named = len(header)
        rows = []
        for line_no, values in enumerate(reader, start=2):
            if not values or not any(v.strip() for v in values):
                continue
            r: dict[str, Any] = {h: v.strip() for h, v in zip(header, values)}
            ratings = [v.strip() for v in values[n_named:] if v.strip()]
            r["ratings"] = ";".join(f"{float(v):g}" for v in ratings) if ratings else ""
            r["_line"] = line_no
            rows.append(r)
    return rows


def prepare(options: SourceOptions) -> PreparedDataset:
    root = require_input_dir(options, "luna16", "LUNA16 .mhd/.raw volumes")
    table = Path(options.labels_csv) if options.labels_csv is not None else root / LABEL_FILE
    if not table.is_file():
        raise FileNotFoundError(f"{table}: LUNA16 label table not found (give --labels CSV)")
    mapping_path = options.extra.get("mapping")
    mapping_path = Path(mapping_path) if mapping_path else table.parent / MAPPING_FILE
    if options.extra.get("mapping") and not mapping_path.is_file():
        raise FileNotFoundError(f"{mapping_path}: LIDC-IDRI-mappingLUNA16 file not found")
    mapping = read_mapping(mapping_path) if mapping_path.is_file() else {}
    if not mapping:
        log.warning("luna16: no %s; series UIDs stand in for patient ids", MAPPING_FILE)

    labels = read_labels(table)
    volumes = find_volumes(root)
    log.info("luna16: %d labelled nodules, %d volumes under %s", len(labels), len(volumes), root)
    spec = options.spec
    skipped: list[Skipped] = []
    by_series: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    counter: dict[str, int] = defaultdict(int)
    for r in labels:
        uid = r["seriesuid"]
        k = counter[uid]
        counter[uid] += 1
        item = f"{uid}-{k}"
        if uid not in volumes:
            skipped.append(Skipped(item, f"{table.name} line {r['_line']}: no volume {uid}.mhd under {root}"))
            continue
        by_series[uid].append((k, r))
    series = list(by_series)
    if options.limit is not None:
        kept, n = [], 0
        for uid in series:
            if n >= options.limit:
                break
            by_series[uid] = by_series[uid][: options.limit - n]
            n += len(by_series[uid])
            kept.append(uid)
        series = kept

    crops: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    it = series
    if options.progress:
        from tqdm import tqdm

        it = tqdm(series, desc="luna16", unit="scan", leave=False)
    for uid in it:
        path, subset = volumes[uid]
        try:
            image = read_image_file(path)
        except VolumeError as e:
            skipped += [Skipped(f"{uid}-{k}", str(e)) for k, _ in by_series[uid]]
            continue
        for k, r in by_series[uid]:
            item = f"{uid}-{k}"
            try:
                center = tuple(_number(r[c], c, table, r["_line"]) for c in ("coordX", "coordY", "coordZ"))
                label = int(_number(r["malignant"], "malignant", table, r["_line"]))
                if label not in (0, 1):
                    raise VolumeError(table, f"line {r['_line']}: malignant is {r['malignant']!r}, not 0/1")
                crop = crop_at_world(image, center, spec, source=str(path))
            except VolumeError as e:
                skipped.append(Skipped(item, str(e)))
                continue
            crops.append(crop)
            rows.append({
                "id": item,
                "patient_id": mapping.get(uid, uid),
                "label": label,
                "diameter_mm": _safe_float(r.get("diameter_mm")),
                "source": "luna16",
                "seriesuid": uid,
                "subset": subset,
                "file": str(path.relative_to(root)),
                "world_x": center[0], "world_y": center[1], "world_z": center[2],
                "ratings": r.get("ratings", ""),
                "fov_fraction": round(crop_coverage(image, center, spec), 4),
            })
    arr = np.stack(crops) if crops else np.zeros((0, *spec.shape), dtype=np.int16)
    meta = {"input": str(root), "labels_csv": str(table),
            "mapping": str(mapping_path) if mapping else None, "volumes_found": len(volumes)}
    return PreparedDataset(arr, rows, spec, "luna16", skipped, meta)


def _number(value: Any, column: str, table: Path, line: int) -> float:
    v = _safe_float(value)
    if not math.isfinite(v):
        raise VolumeError(table, f"line {line}: {column} is {value!r}, not a number")
    return v


def _safe_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
