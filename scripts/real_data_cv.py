#!/usr/bin/env python3
"""Real-data figure: K-fold patient-grouped CV of one training recipe on a prepared VOI dataset,
next to logistic regressions on ``diameter_mm`` (and, as a shortcut probe, on the share of the
crop that is padding) fitted on exactly the same folds.

Needs torch, numpy and scikit-learn (tqdm and safetensors are optional). Prepare the data first
(on any machine; it needs SimpleITK)::

    naslung prepare --source voi --folds 5 --fov-mm none --out runs/voi5
    # the shipped recipe (docs/results.md): fixed 24x24x6 mm field of view, 3 seeds averaged
    python scripts/real_data_cv.py --data runs/voi5 --fov-mm 24,24,6 --model small --epochs 100 \\
        --soft-labels 0.5 --aux-weight 0.3 --rot90 --seeds 0 1 2 --tta --device cuda --out runs/cv

Protocol: for outer fold f, test = fold f, validation = fold f+1 (early stopping and checkpoint
choice only), train = the rest. ``--seeds`` trains one network per seed and fold and scores their
mean probability (an ensemble of that recipe). The logistic regressions have nothing to tune, so
they are fitted on train + validation and scored on the same test fold. ``--fov-mm`` sets the
crop spec's field-of-view box (what the shipped bundle records and the server applies).
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


def _row(name: str, mean: dict, std: dict, pooled: dict) -> str:
    cells = []
    for k in KEYS:
        m, s = mean.get(k), std.get(k)
        cells.append("  n/a" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.3f}±{s:.3f}")
    return f"{name:<30} " + " ".join(f"{c:>12}" for c in cells) + f" {pooled['auc']:>10.3f}"


def recipe_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of a recipe CV (shared with bench/peers.py)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared dataset directory (naslung prepare --source voi)")
    p.add_argument("--folds", type=int, default=5, help="patient-grouped folds (re-assigned if the data differ)")
    p.add_argument("--fov-mm", default=None, metavar="X,Y,Z",
                   help="field-of-view box of the crop spec, e.g. 24,24,6 ('none': keep the dataset's)")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs (default 100)")
    p.add_argument("--batch-size", type=int, default=32, help="(default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="(default 1e-4)")
    p.add_argument("--patience", type=int, default=25, help="early-stopping patience in epochs (default 25)")
    p.add_argument("--select", default="loss", choices=("loss", "auc", "accuracy"),
                   help="checkpoint choice on the validation fold (default loss)")
    p.add_argument("--border-jitter", type=int, default=0,
                   help="VOI-border guard in augmentation: erode up to N voxels per face (0 = off)")
    p.add_argument("--rot90", action="store_true", help="random in-plane quarter turns in augmentation")
    p.add_argument("--soft-labels", type=float, default=0.0, help="weight of the readers' soft label (0 = off)")
    p.add_argument("--aux-weight", type=float, default=0.0,
                   help="weight of the auxiliary regression of the readers' ratings (0 = off)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="one network per seed and fold; their mean probability is scored (default: 0)")
    p.add_argument("--tta", action="store_true", help="also report test-time flip augmentation")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="run directory (results JSON)")
    return p


def load_dataset(args):
    """The prepared dataset with folds and the requested field of view in its crop spec."""
    from naslung.data.spec import parse_fov
    from naslung.data.dataset import PreparedDataset
    from naslung.data.folds import assign_folds

    ds = PreparedDataset.load(args.data)
    if ds.summary()["folds"] != args.folds:
        ds.set_folds(assign_folds(ds.labels, ds.patient_ids, k=args.folds, seed=0))
        print(f"assigned {args.folds} patient-grouped folds")
    if args.fov_mm and args.fov_mm != "none":
        ds = ds.with_field_of_view(parse_fov(args.fov_mm))
    return ds


def train_config(args, head: str | None = None):
    from naslung.train import TrainConfig

    aug = {}
    if args.border_jitter:
        aug["border_jitter"] = args.border_jitter
    if args.rot90:
        aug["rot90_p"] = 1.0
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       patience=args.patience, select_metric=args.select, device=args.device,
                       augment_options=aug, soft_labels=args.soft_labels, aux_weight=args.aux_weight,
                       **getattr(args, "lambda_kwargs", {}))


def baselines(ds) -> list[dict]:
    """Logistic regressions on diameter and on the padding share inside the (boxed) crop."""
    from naslung.train.baselines import feature_baseline

    rows = [feature_baseline(ds, ds.diameters, "logreg(diameter_mm)")]
    hu = ds.spec.apply_fov(ds.crops) if ds.spec.fov_mm is not None else ds.crops
    box = ds.spec.fov_mask()
    inside = hu[:, box] if box is not None else hu.reshape(len(hu), -1)
    rows.append(feature_baseline(ds, (inside == ds.spec.pad_hu).mean(axis=1), "logreg(padding share)"))
    return rows


def report(ds, args, name: str, n_params: int, model: dict, tcfg, res: dict | None, seconds: float) -> int:
    """Print the table and write ``real_data_cv.json``."""
    import torch

    from naslung.train.cv import device_description
    from naslung.train.metrics import json_safe

    base = baselines(ds)
    print(f"\n{'model':<30} " + " ".join(f"{k:>12}" for k in KEYS) + f" {'pooled auc':>10}")
    if res is not None:
        if len(res["single"]) > 1:
            for s in res["single"]:
                print(_row(f"  seed {s['seed']}", s["mean"], s["std"], s["pooled"]))
        e = res["ensemble"]
        print(_row(f"{name} x{len(res['seeds'])}", e["mean"], e["std"], e["pooled"]))
        if res["ensemble_tta"]:
            t = res["ensemble_tta"]
            print(_row(f"{name} x{len(res['seeds'])} + flip TTA", t["mean"], t["std"], t["pooled"]))
    for b in base:
        print(_row(b["name"], b["mean"], b["std"], b["pooled"]))
    print("(mean ± sample std over test folds)")
    out = {
        "data": str(args.data), "dataset_fingerprint": ds.fingerprint(), "summary": ds.summary(),
        "crop_spec": ds.spec.to_dict(), "label_column": ds.meta.get("label_column"), "folds": args.folds,
        "device": device_description(tcfg.resolved_device()), "torch": torch.__version__,
        "name": name, "model": model, "params": n_params, "train": tcfg.to_dict(),
        "cnn": None if res is None else {
            "per_fold": res["ensemble"]["per_fold"], "mean": res["ensemble"]["mean"],
            "std": res["ensemble"]["std"], "pooled": res["ensemble"]["pooled"], "single": res["single"],
            "tta": res["ensemble_tta"], "seeds": res["seeds"], "lambda_final": res["lambda_final"],
            "seconds": seconds},
        "baselines": [{k: v for k, v in b.items() if k != "test_proba"} for b in base],
        "command": " ".join(sys.argv),
        "protocol": "test fold f, validation fold f+1 (early stopping/checkpoint only), train the rest; "
                    "seeds averaged per crop; logistic regressions fitted on train+validation",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if res is not None:  # per-crop test probabilities, to pool seeds or runs afterwards
        import csv

        with open(Path(args.out) / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "patient_id", "fold", "label", "p_malignant", "p_malignant_tta"])
            tta = res.get("proba_tta") or {}
            for i, (cid, pid, f, y) in enumerate(zip(ds.ids, ds.patient_ids, ds.folds, ds.labels)):
                w.writerow([cid, pid, int(f), int(y), f"{res['proba'][i]:.6f}",
                            f"{tta[i]:.6f}" if i in tta else ""])
    path = Path(args.out) / "real_data_cv.json"
    path.write_text(json.dumps(json_safe(out), indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser(__doc__)
    p.add_argument("--model", default="small", help="registered model name or model-config JSON")
    p.add_argument("--head", default=None, choices=("asoftmax", "softmax", "amsoftmax"))
    p.add_argument("--cbam", default=None, choices=("naslung", "naslung-exact", "original", "none"))
    p.add_argument("--margin", type=float, default=None, help="A-Softmax m / AM-Softmax margin (head default)")
    p.add_argument("--lambda-start", type=float, default=1500.0, help="A-Softmax lambda at step 0 (default 1500)")
    p.add_argument("--lambda-min", type=float, default=5.0, help="A-Softmax lambda floor (default 5)")
    p.add_argument("--lambda-floor-at", type=float, default=0.5,
                   help="fraction of training at which lambda reaches its floor (default 0.5)")
    p.add_argument("--baselines-only", action="store_true", help="only the logistic regressions (seconds)")
    args = p.parse_args(argv)
    args.lambda_kwargs = {"lambda_start": args.lambda_start, "lambda_min": args.lambda_min,
                          "lambda_floor_at": args.lambda_floor_at}

    from naslung.models import build_model, count_params, resolve_config
    from naslung.train.cv import seed_ensemble_cv

    ds = load_dataset(args)
    cfg = resolve_config(args.model)
    over = {k: v for k, v in (("head", args.head), ("cbam", args.cbam), ("margin", args.margin)) if v is not None}
    cfg = dataclasses.replace(cfg, in_size=ds.spec.size, **over)
    n_params = count_params(build_model(cfg))
    tcfg = train_config(args)
    s = ds.summary()
    print(f"{args.data}: {s['n']} crops ({s['malignant']} malignant / {s['benign']} benign), {s['patients']} "
          f"patients, {args.folds} folds; crops {ds.spec.describe()}; model {cfg.name or cfg.key} "
          f"({n_params:,} params), seeds {args.seeds}")
    t0 = time.perf_counter()
    res = None if args.baselines_only else seed_ensemble_cv(
        ds, cfg, tcfg, args.seeds, out=args.out, progress=not args.no_progress, tta=args.tta)
    return report(ds, args, cfg.name or cfg.key, n_params, cfg.to_dict(), tcfg, res, time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
