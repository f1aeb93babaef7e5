#!/usr/bin/env python3
"""Pool per-crop test probabilities of several CV runs (``predictions.csv`` of
``scripts/real_data_cv.py``, e.g. one run per seed) into the CV figures of their mean: the
cross-validated score of an ensemble of those recipes.

    python scripts/pool_predictions.py docs/measurements/2026-12-04/ship_cv_seed*.predictions.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from naslung.train.metrics import binary_metrics, summarize

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="predictions.csv files of runs on the same dataset and folds")
    args = p.parse_args(argv)
    tables = [list(csv.DictReader(open(f))) for f in args.files]
    ids = [r["id"] for r in tables[0]]
    if any([r["id"] for r in t] != ids or [r["fold"] for r in t] != [r["fold"] for r in tables[0]] for t in tables):
        raise SystemExit("the files do not hold the same crops in the same folds")
    y = np.array([int(r["label"]) for r in tables[0]])
    fold = np.array([int(r["fold"]) for r in tables[0]])
    for column in ("p_malignant", "p_malignant_tta"):
        if any(r[column] == "" for t in tables for r in t):
            continue
        p_mean = np.mean([[float(r[column]) for r in t] for t in tables], axis=0)
        per = [binary_metrics(y[fold == f], p_mean[fold == f]) for f in sorted(set(fold))]
        s = summarize(per)
        cells = "  ".join(f"{k} {s['mean'][k]:.3f}±{s['std'][k]:.3f}" for k in KEYS)
        print(f"{column:<16} mean of {len(tables)}: {cells}  pooled auc {binary_metrics(y, p_mean)['auc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
