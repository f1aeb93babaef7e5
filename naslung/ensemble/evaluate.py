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


def evaluate_bundle(ensemble, ds, indices: np.ndarray, *, batch_size: int = 64, device: str = "cpu",
                    subset: str = "") -> Evaluation:
    """Run ``ensemble`` (naive or fast; anything with ``member_proba``) on ``ds`` crops ``indices``."""
    import torch

    from naslung.ensemble.rules import combine
    from naslung.train.metrics import binary_metrics

    if ds.spec != ensemble.spec:
        raise ValueError(f"dataset crop spec {ds.spec} differs from the bundle's {ensemble.spec}; "
                         f"prepare the data with the bundle's crop spec")
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
