"""Binary classification metrics (scikit-learn), per fold and summarised as mean +- std."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

METRIC_KEYS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


DECISION_THRESHOLD = 0.5


def predict_label(proba_pos, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """Hard decisions: 1 (malignant) only when ``proba_pos > threshold`` -- strictly, so a tie is
    benign, as argmax and ``naslung.ensemble.rules.decide``. Every place that turns a probability
    into a label uses this one rule, so a CSV's ``pred`` column and the metrics never disagree."""
    return (np.asarray(proba_pos, dtype=float) > threshold).astype(int)


def binary_metrics(y_true, proba_pos, threshold: float = DECISION_THRESHOLD) -> dict[str, Any]:
    """accuracy, sensitivity (recall of class 1), specificity, F1, ROC AUC, n and the confusion.

    ``proba_pos`` is P(malignant); prediction is ``proba_pos > threshold`` (a tie is benign, as argmax and
    ``naslung.ensemble.rules.decide``). AUC is NaN when the
    set holds only one class; sensitivity/specificity are NaN when their class is absent.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(proba_pos, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    pred = predict_label(p, threshold)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel().tolist()
    n = len(y)
    return {
        "accuracy": (tp + tn) / n if n else math.nan,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "f1": float(f1_score(y, pred, labels=[0, 1], zero_division=0)) if n else math.nan,
        "auc": float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else math.nan,
        "n": n,
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def confusion(y_true, proba_pos, threshold: float = DECISION_THRESHOLD) -> list[list[int]]:
    """2x2 confusion matrix, rows = true (benign, malignant), columns = predicted."""
    m = binary_metrics(y_true, proba_pos, threshold)
    return [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]


def summarize(per_fold: Iterable[dict[str, Any]], keys: tuple[str, ...] = METRIC_KEYS) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) over folds, ignoring NaN entries."""
    rows = list(per_fold)
    out: dict[str, dict[str, float]] = {"mean": {}, "std": {}}
    for k in keys:
        v = np.array([r[k] for r in rows if r.get(k) is not None], dtype=float)
        v = v[~np.isnan(v)]
        out["mean"][k] = float(v.mean()) if len(v) else math.nan
        out["std"][k] = float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else math.nan)
    return out


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
