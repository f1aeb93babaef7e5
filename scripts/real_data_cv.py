#!/usr/bin/env python3
"""Real-data figure: K-fold patient-grouped CV of one small CNN on a prepared VOI dataset, next to
logistic regressions on ``diameter_mm`` (and, as a shortcut probe, on ``fov_fraction``) fitted on
exactly the same folds.

Needs torch, numpy and scikit-learn (tqdm and safetensors are optional). Prepare the data first
(on any machine; it needs SimpleITK)::

    naslung prepare --source voi --folds 5 --out runs/voi
    python scripts/real_data_cv.py --data runs/voi --model small --folds 5 --epochs 100 \
        --device cuda --out runs/voi-small

Protocol: for outer fold f, test = fold f, validation = fold f+1 (early stopping and checkpoint
choice only), train = the rest. The logistic regressions have nothing to tune, so they are fitted
on train + validation and scored on the same test fold. ``fov_fraction`` is the share of the crop
covered by the VOI (the rest is -1000 HU padding): if it alone predicts the label well, the padding
border is a shortcut the CNN can take too (see shared/data/lidc-voi/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

KEYS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def feature_baseline(ds, values: np.ndarray, name: str) -> dict:
    """Logistic regression on one standardised feature, per outer fold (train+val -> test)."""
    from sklearn.linear_model import LogisticRegression

    from naslung.data.folds import split_fold
    from naslung.train.metrics import binary_metrics, summarize

    y = ds.labels
    k = int(ds.folds.max()) + 1
    per_fold, y_all, p_all = [], [], []
    for f in range(k):
        s = split_fold(ds.folds, f)
        fit_idx = np.concatenate([s.train, s.val])
        v = values.astype(float).copy()
        med = np.nanmedian(v[fit_idx])
        v[np.isnan(v)] = med  # impute missing values with the training median
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
    summ = summarize(per_fold)
    return {"name": name, "per_fold": per_fold, "mean": summ["mean"], "std": summ["std"],
            "pooled": binary_metrics(np.concatenate(y_all), np.concatenate(p_all)),
            "missing": int(np.isnan(values.astype(float)).sum())}


def _row(name: str, mean: dict, std: dict, pooled: dict) -> str:
    cells = []
    for k in KEYS:
        m, s = mean.get(k), std.get(k)
        cells.append("  n/a" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.3f}±{s:.3f}")
    return f"{name:<26} " + " ".join(f"{c:>12}" for c in cells) + f" {pooled['auc']:>10.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared dataset directory (naslung prepare --source voi)")
    p.add_argument("--model", default="small", help="registered model name or model-config JSON")
    p.add_argument("--head", default=None, choices=("asoftmax", "softmax", "amsoftmax"))
    p.add_argument("--folds", type=int, default=5, help="patient-grouped folds (re-assigned if the data differ)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=25)
    p.add_argument("--select", default="loss", choices=("loss", "auc", "accuracy"))
    p.add_argument("--border-jitter", type=int, default=0,
                   help="VOI-border guard in augmentation: erode up to N voxels per face (0 = off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--baselines-only", action="store_true", help="only the logistic regressions (seconds)")
    p.add_argument("--out", required=True, help="run directory (CV checkpoints + real_data_cv.json)")
    args = p.parse_args(argv)

    import torch

    from naslung.data.dataset import PreparedDataset
    from naslung.data.folds import assign_folds
    from naslung.models import count_params, build_model, resolve_config
    from naslung.train import TrainConfig, cross_validate
    from naslung.train.cv import device_description
    from naslung.train.metrics import json_safe

    ds = PreparedDataset.load(args.data)
    if ds.summary()["folds"] != args.folds:
        ds.set_folds(assign_folds(ds.labels, ds.patient_ids, k=args.folds, seed=args.seed))
        print(f"assigned {args.folds} patient-grouped folds")
    cfg = resolve_config(args.model)
    cfg = dataclasses.replace(cfg, in_size=ds.spec.size, **({"head": args.head} if args.head else {}))
    n_params = count_params(build_model(cfg))
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                       select_metric=args.select, seed=args.seed, device=args.device,
                       augment_options={"border_jitter": args.border_jitter} if args.border_jitter else {})
    device = tcfg.resolved_device()
    s = ds.summary()
    print(f"{args.data}: {s['n']} crops ({s['malignant']} malignant / {s['benign']} benign), {s['patients']} "
          f"patients, {args.folds} folds; model {cfg.name or cfg.key} ({n_params:,} params); "
          f"{device_description(device)}")

    t0 = time.perf_counter()
    cv = None if args.baselines_only else cross_validate(ds, cfg, tcfg, out=args.out, progress=not args.no_progress)
    cnn_seconds = time.perf_counter() - t0
    baselines = [feature_baseline(ds, ds.diameters, "logreg(diameter_mm)")]
    if all("fov_fraction" in r for r in ds.rows):
        fov = np.array([float(r["fov_fraction"]) if r["fov_fraction"] not in ("", None) else np.nan
                        for r in ds.rows])
        baselines.append(feature_baseline(ds, fov, "logreg(fov_fraction)"))

    print(f"\n{'model':<26} " + " ".join(f"{k:>12}" for k in KEYS) + f" {'pooled auc':>10}")
    if cv is not None:
        print(_row(f"{cfg.name or 'cnn'} ({n_params / 1e6:.2f} M)", cv.metrics["mean"], cv.metrics["std"],
                   cv.metrics["pooled"]))
    for b in baselines:
        print(_row(b["name"], b["mean"], b["std"], b["pooled"]))
    print("(mean ± sample std over test folds)")

    out = {
        "data": str(args.data),
        "dataset_fingerprint": ds.fingerprint(),
        "summary": s,
        "label_column": ds.meta.get("label_column"),
        "folds": args.folds,
        "device": device_description(device),
        "torch": torch.__version__,
        "model": cfg.to_dict(),
        "params": n_params,
        "train": tcfg.to_dict(),
        "cnn": None if cv is None else {
            "per_fold": cv.metrics["per_fold"], "mean": cv.metrics["mean"], "std": cv.metrics["std"],
            "pooled": cv.metrics["pooled"], "confusion": cv.confusion, "seconds": cnn_seconds},
        "baselines": baselines,
        "protocol": "test fold f, validation fold f+1 (CNN early stopping/checkpoint only), train the rest; "
                    "logistic regressions fitted on train+validation",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "real_data_cv.json"
    path.write_text(json.dumps(json_safe(out), indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
