"""``naslung train``: patient-grouped cross-validation of one model config on a prepared dataset.

Writes RUN/ with one checkpoint per outer fold (weights + JSON), cv_metrics.json (per fold and
mean +- std), confusion_matrix.csv and folds.csv (every test prediction). Early stopping and
checkpoint choice use the inner validation fold only; the test fold is predicted once at the end.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung train --data runs/data --model small --folds 5 --out runs/train
  naslung train --data runs/voi --model model1 --folds 5 --epochs 80 --device cuda --out runs/voi-model1
  naslung train --data runs/data --config search/top1.json --only-fold 0 --epochs 5 --out runs/quick
  naslung train --data runs/voi --config examples/recipes/medium-m1.json \
      --train-config examples/recipes/lidc-voi-softaux-m1.json --device cuda --out runs/voi-recipe

named models: tiny, small, model1, medium, naslung-ref, naslung-main (see `naslung profile`)
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="cross-validate a model config on a prepared dataset",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--data", required=True, help="prepared dataset directory (naslung prepare --out)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=None, help="registered model name (default: small)")
    g.add_argument("--config", default=None, help="model config JSON (search export or checkpoint.json)")
    p.add_argument("--head", choices=("asoftmax", "softmax", "amsoftmax"), default=None,
                   help="override the config's head")
    p.add_argument("--cbam", choices=("naslung", "naslung-exact", "original", "none"), default=None,
                   help="override the config's CBAM variant")
    p.add_argument("--folds", type=int, default=None,
                   help="number of patient-grouped folds; re-assigned (seeded) when the dataset has another count")
    p.add_argument("--only-fold", type=int, action="append", default=None,
                   help="run only this outer fold (repeatable)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs per fold (most; see --patience)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    p.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw", help="optimizer")
    p.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine",
                   help="learning-rate schedule per epoch")
    p.add_argument("--patience", type=int, default=15, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--select", choices=("loss", "auc", "accuracy"), default="loss",
                   help="validation score for checkpoint choice and early stopping")
    p.add_argument("--class-balanced", action="store_true", help="class-balanced batch sampling")
    p.add_argument("--no-augment", action="store_true", help="turn off the on-device augmentation")
    p.add_argument("--border-jitter", type=int, default=0,
                   help="VOI-border guard: erode up to N voxels of field of view per face (augmentation)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--seed", type=int, default=0, help="seed for fold assignment, initialisation and batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--margin", type=float, default=None,
                   help="override the head's margin (A-Softmax m, an integer; AM-Softmax m)")
    p.add_argument("--train-config", default=None, metavar="JSON",
                   help="training recipe (TrainConfig JSON, e.g. examples/recipes/lidc-voi-softaux-m1.json: "
                        "lambda schedule, reader soft labels, aux ratings, augmentation); replaces the "
                        "training flags above, keeps --seed and --device")
    p.add_argument("--fov-mm", default=None, metavar="X,Y,Z",
                   help="field-of-view box for the crop spec (only if the data has none or the same)")
    p.add_argument("--out", required=True, help="run directory to write")
    return p


def _fmt(m: dict, k: str) -> str:
    v = m.get(k)
    return "  n/a" if v is None or v != v else f"{v:.3f}"


def format_table(result) -> str:
    """Per-fold test metrics, mean +- std and pooled, as a fixed-width table."""
    keys = ("accuracy", "sensitivity", "specificity", "f1", "auc")
    head = f"{'fold':>6} {'best ep':>7} {'val auc':>7} " + " ".join(f"{k[:11]:>11}" for k in keys) + f" {'n':>5}"
    lines = [head, "-" * len(head)]
    for f in result.metrics["per_fold"]:
        t = f["test"]
        lines.append(f"{f['fold']:>6} {f['best_epoch']:>7} {_fmt(f['val'], 'auc'):>7} "
                     + " ".join(f"{_fmt(t, k):>11}" for k in keys) + f" {t['n']:>5}")
    lines.append("-" * len(head))
    mean, std = result.metrics["mean"], result.metrics["std"]
    lines.append(f"{'mean':>6} {'':>7} {'':>7} "
                 + " ".join(f"{_fmt(mean, k) + '±' + _fmt(std, k).strip():>11}" for k in keys))
    pooled = result.metrics["pooled"]
    lines.append(f"{'pooled':>6} {'':>7} {'':>7} " + " ".join(f"{_fmt(pooled, k):>11}" for k in keys)
                 + f" {pooled['n']:>5}")
    cm = result.confusion
    lines.append(f"confusion (rows true benign/malignant, cols predicted): {cm[0]} {cm[1]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from naslung.data.dataset import PreparedDataset
    from naslung.models import get_config, resolve_config
    from naslung.train import TrainConfig, cross_validate

    ds = PreparedDataset.load(args.data)
    if args.folds is not None:
        current = ds.summary()["folds"]
        if current != args.folds:
            from naslung.data.folds import assign_folds

            ds.set_folds(assign_folds(ds.labels, ds.patient_ids, k=args.folds, seed=args.seed))
            print(f"assigned {args.folds} patient-grouped folds (dataset had {current})")
    cfg = resolve_config(args.config) if args.config else get_config(args.model or "small")
    if args.fov_mm:
        from naslung.data.spec import parse_fov

        ds = ds.with_field_of_view(parse_fov(args.fov_mm))
    overrides = {k: v for k, v in (("head", args.head), ("cbam", args.cbam), ("margin", args.margin))
                 if v is not None}
    if ds.spec.size != cfg.in_size:
        overrides["in_size"] = ds.spec.size
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    augment_options = {"border_jitter": args.border_jitter} if args.border_jitter else {}
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       optimizer=args.optimizer, schedule=args.schedule, patience=args.patience,
                       select_metric=args.select, seed=args.seed, device=args.device, amp=not args.no_amp,
                       augment=not args.no_augment, augment_options=augment_options,
                       class_balanced=args.class_balanced)
    if args.train_config:
        tcfg = TrainConfig.from_file(args.train_config, seed=args.seed, device=args.device)
    s = ds.summary()
    print(f"data {args.data}: {s['n']} crops ({s['malignant']} malignant, {s['benign']} benign), "
          f"{s['patients']} patients, {s['folds']} folds; model {cfg.name or cfg.key}; "
          f"device {tcfg.resolved_device()}")
    t0 = time.perf_counter()
    result = cross_validate(ds, cfg, tcfg, folds=args.only_fold, out=args.out, progress=not args.no_progress)
    print(format_table(result))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
