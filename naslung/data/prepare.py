"""Build a prepared dataset from one source and assign its folds (what ``naslung prepare`` runs)."""
from __future__ import annotations

import logging

import numpy as np

from naslung.data.dataset import DatasetError, PreparedDataset
from naslung.data.folds import assign_folds, assign_folds_from_column
from naslung.data.sources import get_source
from naslung.data.sources.base import SourceOptions

log = logging.getLogger(__name__)


def prepare_dataset(source: str, options: SourceOptions, folds: int = 10, fold_seed: int = 0,
                    fold_column: str | None = None) -> PreparedDataset:
    """Run a source and assign folds: patient-grouped stratified ``folds``-fold, or, with
    ``fold_column`` (e.g. ``"subset"`` for LUNA16), one fold per distinct value of that column.
    ``folds=0`` leaves folds unassigned (-1)."""
    ds = get_source(source)(options)
    if len(ds) == 0:
        reasons = "; ".join(f"{s.item}: {s.reason}" for s in ds.skipped[:3])
        raise DatasetError(f"source {source!r} produced no crops"
                           + (f" ({len(ds.skipped)} skipped, e.g. {reasons})" if ds.skipped else ""))
    if fold_column is not None:
        values = [str(r.get(fold_column, "")).strip() for r in ds.rows]
        missing = sum(v == "" for v in values)
        if missing:
            raise DatasetError(f"{missing} of {len(values)} crops have no {fold_column!r} value; "
                               "cannot take folds from that column")
        f = assign_folds_from_column(np.asarray(values))
        ds.meta["folds"] = {"by": "column", "column": fold_column, "k": int(f.max()) + 1}
        _check_patients_within_folds(ds, f)
        ds.set_folds(f)
    elif folds:
        ds.set_folds(assign_folds(ds.labels, ds.patient_ids, k=folds, seed=fold_seed))
        ds.meta["folds"] = {"by": "patient-grouped stratified", "k": folds, "seed": fold_seed}
    s = ds.summary()
    log.info("%s: %d crops (%d malignant, %d benign), %d patients, %d folds, %d skipped", source, s["n"],
             s["malignant"], s["benign"], s["patients"], s["folds"], s["skipped"])
    return ds


def _check_patients_within_folds(ds: PreparedDataset, folds: np.ndarray) -> None:
    """Column folds (LUNA16 subsets) should already keep each patient in one fold; warn if not."""
    seen: dict[str, int] = {}
    split = set()
    for pid, f in zip(ds.patient_ids, folds):
        if seen.setdefault(pid, int(f)) != int(f):
            split.add(pid)
    if split:
        log.warning("%d patients fall in more than one fold of the column folds (e.g. %s)", len(split),
                    sorted(split)[0])
