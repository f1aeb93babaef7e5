"""Training targets beyond the hard label: what every reader said, from the dataset manifest.

LIDC-IDRI nodules were rated by up to four radiologists. The NAS-Lung label keeps one bit of that
(mean malignancy rating > 3); the manifest keeps the rest (``naslung_ratings``, e.g. ``"2;1;1;1"``,
and the consensus semantic ratings). Two ways to learn from it:

* **Soft labels**: P(malignant) = (mean rating - 1) / 4, which is above 0.5 exactly when the mean is
  above 3, so its argmax is the hard label; a 3.5 nodule is then a less certain "malignant" than a 5.
* **Auxiliary targets**: the mean malignancy rating and the semantic ratings (spiculation,
  lobulation, margin, sphericity, texture, calcification, subtlety), regressed from the embedding
  by a small head used only in training (multi-task learning; the served model is unchanged).

Missing values are NaN and simply do not count in the loss.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

RATING_COLUMN = "naslung_ratings"
MALIGNANCY_MEAN = "malignancy_mean"
SEMANTIC_COLUMNS = ("spiculation", "lobulation", "margin", "sphericity", "texture", "calcification", "subtlety")
DEFAULT_AUX = (MALIGNANCY_MEAN,) + SEMANTIC_COLUMNS


def mean_rating(value: Any) -> float:
    """Mean of a ``"2;1;1;1"`` reader-rating cell; NaN when empty or unreadable."""
    if value is None:
        return math.nan
    parts = [p for p in str(value).replace(",", ";").split(";") if p.strip()]
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        return math.nan
    return float(np.mean(nums)) if nums else math.nan


def soft_label(mean: float) -> float:
    """P(malignant) from a mean malignancy rating on LIDC's 1..5 scale (NaN stays NaN)."""
    return float(np.clip((mean - 1.0) / 4.0, 0.0, 1.0)) if math.isfinite(mean) else math.nan


def _number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


@dataclass
class ReaderTargets:
    """Per-crop soft labels (N,) and auxiliary targets (N, K); NaN where a value is missing."""

    soft: np.ndarray
    aux: np.ndarray
    aux_names: tuple[str, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], aux_names: Sequence[str] = DEFAULT_AUX) -> "ReaderTargets":
        means = np.array([mean_rating(r.get(RATING_COLUMN)) for r in rows], dtype=np.float64)
        soft = np.array([soft_label(m) for m in means], dtype=np.float32)
        cols = []
        for name in aux_names:
            if name == MALIGNANCY_MEAN:
                cols.append(means)
            else:
                cols.append(np.array([_number(r.get(name)) for r in rows], dtype=np.float64))
        aux = np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((len(rows), 0), np.float32)
        return cls(soft=soft, aux=aux, aux_names=tuple(aux_names))

    def require_soft(self, labels: np.ndarray) -> None:
        """Refuse soft labels that are missing or disagree with the hard labels (a wrong column)."""
        if np.isnan(self.soft).all():
            raise ValueError(f"soft labels need the manifest column {RATING_COLUMN!r} (reader ratings); "
                             "this dataset has none: set soft_labels to 0")
        ok = ~np.isnan(self.soft)
        agree = (self.soft[ok] > 0.5) == (np.asarray(labels)[ok] == 1)
        if not agree.all():
            raise ValueError(f"{int((~agree).sum())} crops have reader ratings whose mean disagrees with their "
                             "label; soft labels would contradict the hard ones (label column not the "
                             "NAS-Lung mean-rating rule?)")

    def standardized_aux(self, fit_idx: np.ndarray) -> np.ndarray:
        """Aux targets standardised with the mean/std of ``fit_idx`` (training crops only)."""
        if self.aux.shape[1] == 0:
            return self.aux
        fit = self.aux[fit_idx]
        with warnings.catch_warnings():  # an all-missing column is expected (e.g. no lobulation ratings)
            warnings.simplefilter("ignore", RuntimeWarning)
            mu = np.nanmean(fit, axis=0)
            sd = np.nanstd(fit, axis=0)
        mu = np.where(np.isfinite(mu), mu, 0.0)
        sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        return ((self.aux - mu) / sd).astype(np.float32)
