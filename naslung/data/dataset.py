"""The prepared-dataset directory: the contract between ``naslung prepare`` and everything after it.

Layout::

    DIR/manifest.csv   one row per crop: id, patient_id, label, diameter_mm, source, source fields,
                       and ``fold`` once folds are assigned (-1 = unassigned)
    DIR/crops.npy      int16 HU, shape (N, S, S, S), axis order (z, y, x), row i = manifest row i
    DIR/dataset.json   format version, crop spec, source, counts, skipped inputs with reasons

Crops stay in HU on disk; :class:`naslung.data.spec.CropSpec` maps them to network input.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from naslung.data.spec import CropSpec

FORMAT_VERSION = 1
REQUIRED_COLUMNS = ("id", "patient_id", "label", "diameter_mm", "source")


class DatasetError(ValueError):
    """A prepared dataset is missing, malformed, or inconsistent."""


@dataclass
class Skipped:
    """An input that could not be turned into a crop, and why (reported, never silently dropped)."""

    item: str
    reason: str


@dataclass
class PreparedDataset:
    crops: np.ndarray  # (N, S, S, S) int16 HU
    rows: list[dict[str, Any]]
    spec: CropSpec
    source: str
    skipped: list[Skipped] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crops.ndim != 4 or self.crops.shape[1:] != self.spec.shape:
            raise DatasetError(f"crops have shape {self.crops.shape}, expected (N, {self.spec.size}, "
                               f"{self.spec.size}, {self.spec.size})")
        if len(self.rows) != len(self.crops):
            raise DatasetError(f"{len(self.rows)} manifest rows but {len(self.crops)} crops")
        for i, r in enumerate(self.rows):
            missing = [c for c in REQUIRED_COLUMNS if c not in r]
            if missing:
                raise DatasetError(f"manifest row {i} lacks columns {missing}")
            r.setdefault("fold", -1)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.rows], dtype=np.int64)

    @property
    def patient_ids(self) -> np.ndarray:
        return np.array([str(r["patient_id"]) for r in self.rows])

    @property
    def folds(self) -> np.ndarray:
        return np.array([int(r["fold"]) for r in self.rows], dtype=np.int64)

    @property
    def diameters(self) -> np.ndarray:
        return np.array([float(r["diameter_mm"]) for r in self.rows], dtype=np.float64)

    @property
    def ids(self) -> list[str]:
        return [str(r["id"]) for r in self.rows]

    def set_folds(self, folds: Sequence[int]) -> None:
        if len(folds) != len(self):
            raise DatasetError(f"{len(folds)} fold ids for {len(self)} crops")
        for r, f in zip(self.rows, folds):
            r["fold"] = int(f)

    def with_field_of_view(self, fov_xyz_mm: Sequence[float] | None) -> "PreparedDataset":
        """The same crops seen through a field-of-view box: the crop spec records the box, and
        normalising applies it (so a model trained on the result, and its bundle, use the box).

        Raises:
            DatasetError: when the crops already have a different box (a box cannot be widened:
                the voxels outside it are gone).
        """
        import dataclasses

        if fov_xyz_mm is None:
            return self
        fov = tuple(float(v) for v in fov_xyz_mm)
        if self.spec.fov_mm is not None and tuple(self.spec.fov_mm) != fov:
            raise DatasetError(f"the crops were prepared with a {self.spec.fov_mm} mm field of view; "
                               f"cannot use {fov} (prepare again with --fov-mm)")
        return PreparedDataset(self.crops, self.rows, dataclasses.replace(self.spec, fov_mm=fov), self.source,
                               self.skipped, self.meta)

    def subset(self, index: Iterable[int]) -> "PreparedDataset":
        idx = np.asarray(list(index), dtype=np.int64)
        return PreparedDataset(self.crops[idx], [dict(self.rows[i]) for i in idx], self.spec,
                               self.source, list(self.skipped), dict(self.meta))

    def summary(self) -> dict[str, Any]:
        labels = self.labels
        return {
            "n": len(self),
            "malignant": int((labels == 1).sum()),
            "benign": int((labels == 0).sum()),
            "patients": int(len(set(self.patient_ids))),
            "skipped": len(self.skipped),
            "folds": int(self.folds.max() + 1) if len(self) and self.folds.max() >= 0 else 0,
        }

    def fingerprint(self) -> str:
        """A short content hash (crops + labels + ids): bundles record which data trained them."""
        import hashlib

        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.crops).tobytes())
        h.update(",".join(f"{r['id']}:{r['label']}" for r in self.rows).encode())
        return h.hexdigest()[:16]

    # ---------------------------------------------------------------- disk
    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        columns = list(REQUIRED_COLUMNS) + ["fold"]
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        with open(out / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k, "") for k in columns})
        np.save(out / "crops.npy", np.ascontiguousarray(self.crops.astype(np.int16)))
        info = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": self.source,
            "crop_spec": self.spec.to_dict(),
            "summary": self.summary(),
            "skipped": [{"item": s.item, "reason": s.reason} for s in self.skipped],
            "meta": self.meta,
        }
        (out / "dataset.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, root: str | Path, mmap: bool = False) -> "PreparedDataset":
        root = Path(root)
        for name in ("manifest.csv", "crops.npy", "dataset.json"):
            if not (root / name).is_file():
                raise DatasetError(f"{root}: not a prepared dataset ({name} missing); "
                                   f"create one with `naslung prepare --out {root}`")
        info = json.loads((root / "dataset.json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{root}/dataset.json: format version {info.get('format_version')} "
                               f"is not supported (expected {FORMAT_VERSION})")
        with open(root / "manifest.csv", newline="") as f:
            rows = [dict(r) for r in csv.DictReader(f)]
        for r in rows:
            r["label"] = int(r["label"])
            r["fold"] = int(r.get("fold") or -1)
            r["diameter_mm"] = float(r["diameter_mm"]) if r["diameter_mm"] not in ("", None) else float("nan")
        crops = np.load(root / "crops.npy", mmap_mode="r" if mmap else None)
        skipped = [Skipped(**s) for s in info.get("skipped", [])]
        return cls(crops, rows, CropSpec.from_dict(info["crop_spec"]), info.get("source", "?"),
                   skipped, info.get("meta", {}))
