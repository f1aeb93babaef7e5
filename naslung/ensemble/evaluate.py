"""Evaluate a bundle on a prepared dataset: which crops, predictions, the six headline metrics."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc", "n")


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # exactly METRICS, NaN -> None
    subset: str  # human description of the crops used
    indices: np.ndarray
    proba: np.ndarray  # (n, 2)
    member_proba: np.ndarray  # (M, n, 2)


def choose_indices(ds, manifest: dict[str, Any], fold: int | None = None, all_crops: bool = False
                   ) -> tuple[np.ndarray, str]:
    """The crops to evaluate on and a description; refuses evaluation sets that leak training crops
    unless asked for explicitly (``all_crops``).

    Default: the bundle's held-out test fold when this is the dataset it was trained on (same
    fingerprint), else every crop (an external dataset).
    """
    n = len(ds)
    same = manifest.get("training_data", {}).get("fingerprint") == ds.fingerprint()
    trained_fold = manifest.get("training", {}).get("test_fold")
    if same and manifest.get("training", {}).get("all_data") and fold is None and not all_crops:
        val = manifest["training"].get("val_fold")
        raise ValueError("this bundle was trained on every fold of this dataset except validation fold "
                         f"{val}: it has no held-out test fold here (its test figures come from "
                         f"cross-validation, see its REPORT.md). Use --fold {val} for its validation fold "
                         "(used for early stopping, so optimistic), --all for training-set figures, or "
                         "evaluate on other patients")
    if all_crops:
        if same:
            log.warning("evaluating on all crops of the training dataset: includes the bundle's training data")
        return np.arange(n), "all crops" + (" (includes training crops!)" if same else "")
    if fold is not None:
        folds = ds.folds
        if folds.min() < 0:
            raise ValueError("the dataset has no folds assigned; use --all")
        if not 0 <= fold <= folds.max():
            raise ValueError(f"fold {fold} out of range 0..{folds.max()}")
        if same and trained_fold is not None and fold != trained_fold:
            log.warning("fold %d was part of this bundle's training/validation data (its test fold is %s)",
                        fold, trained_fold)
        return np.flatnonzero(folds == fold), f"fold {fold}"
    if same and trained_fold is not None:
        return np.flatnonzero(ds.folds == int(trained_fold)), f"held-out test fold {trained_fold}"
    return np.arange(n), "all crops (external dataset)"


def match_crop_spec(ds, spec) -> tuple[Any, str | None]:
    """``ds`` seen through the bundle's crop spec, and a note when that changed anything.

    A dataset prepared without a field-of-view box gets the bundle's box (the bundle applies it
    to every input anyway); any other difference is refused, since the model would see input
    prepared differently from its training.

    Raises:
        ValueError: when the crops differ from the bundle's spec in a way a box cannot fix.
    """
    import dataclasses

    if ds.spec == spec:
        return ds, None
    if ds.spec.fov_mm is None and spec.fov_mm is not None and dataclasses.replace(ds.spec, fov_mm=spec.fov_mm) == spec:
        return ds.with_field_of_view(spec.fov_mm), (
            f"applied the bundle's field of view ({spec.describe()}) to crops prepared without one")
    raise ValueError(f"dataset crops ({ds.spec.describe()}) differ from the bundle's ({spec.describe()}); "
                     "prepare the data with the bundle's crop spec (naslung prepare --crop-size/--spacing/--fov-mm)")


def evaluate_bundle(ensemble, ds, indices: np.ndarray, *, batch_size: int = 64, device: str = "cpu",
                    subset: str = "") -> Evaluation:
    """Run ``ensemble`` (naive or fast; anything with ``member_proba``) on ``ds`` crops ``indices``."""
    import torch

    from naslung.ensemble.rules import combine
    from naslung.train.metrics import binary_metrics

    ds, _ = match_crop_spec(ds, ensemble.spec)
    if len(indices) == 0:
        raise ValueError(f"no crops to evaluate ({subset or 'empty selection'})")
    parts = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        x = ds.spec.normalize_torch(torch.from_numpy(np.asarray(ds.crops[idx])).to(device)).unsqueeze(1)
        parts.append(ensemble.member_proba(x).float().cpu())
    mp = torch.cat(parts, dim=1) if parts else torch.zeros((len(ensemble.member_names), 0, 2))
    proba = combine(mp, ensemble.rule, ensemble.weights).numpy()
    m = binary_metrics(ds.labels[indices], proba[:, 1])
    metrics = {k: (None if isinstance(m[k], float) and m[k] != m[k] else m[k]) for k in METRICS}
    return Evaluation(metrics=metrics, subset=subset, indices=indices, proba=proba, member_proba=mp.numpy())
