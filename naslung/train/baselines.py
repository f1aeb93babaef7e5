"""Baselines with nothing to tune, scored on exactly the folds of the CNNs.

A logistic regression on one feature (the nodule's diameter; the share of a crop that is real CT,
``fov_fraction``, as a shortcut probe) is fitted on train + validation of each outer fold and
scored on its test fold: a CNN that does not beat the diameter has learnt nothing a ruler cannot.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def feature_baseline(ds, values: np.ndarray, name: str) -> dict[str, Any]:
    """Logistic regression on one standardised feature, per outer fold (train+val -> test).

    Args:
        ds: a prepared dataset with folds assigned.
        values: one number per crop (NaN = missing, imputed with the fitting folds' median).
        name: the row's name in tables.

    Returns:
        ``{"name", "per_fold", "mean", "std", "pooled", "missing", "test_proba"}``; ``test_proba``
        maps crop index to P(malignant), for pooled or paired comparisons.
    """
    from sklearn.linear_model import LogisticRegression

    from naslung.data.folds import split_fold
    from naslung.train.metrics import binary_metrics, summarize

    y = ds.labels
    k = int(ds.folds.max()) + 1
    per_fold, y_all, p_all, proba = [], [], [], {}
    for f in range(k):
        s = split_fold(ds.folds, f)
        fit_idx = np.concatenate([s.train, s.val])
        v = np.asarray(values, dtype=float).copy()
        med = np.nanmedian(v[fit_idx])
        v[np.isnan(v)] = med
        mu, sd = v[fit_idx].mean(), v[fit_idx].std() or 1.0
        x = ((v - mu) / sd)[:, None]
        lr = LogisticRegression().fit(x[fit_idx], y[fit_idx])
        p = lr.predict_proba(x[s.test])[:, 1]
        m = binary_metrics(y[s.test], p)
        m["fold"] = f
        m["coef"] = float(lr.coef_[0, 0])
        per_fold.append(m)
        y_all.append(y[s.test])
        p_all.append(p)
        proba.update({int(i): float(q) for i, q in zip(s.test, p)})
    summ = summarize(per_fold)
    return {"name": name, "per_fold": per_fold, "mean": summ["mean"], "std": summ["std"],
            "pooled": binary_metrics(np.concatenate(y_all), np.concatenate(p_all)),
            "missing": int(np.isnan(np.asarray(values, dtype=float)).sum()), "test_proba": proba}

