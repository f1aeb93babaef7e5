"""``naslung evaluate``: accuracy, sensitivity, specificity, F1, AUC and n of a bundle on a dataset.

By default the bundle is evaluated on its held-out test fold when the dataset is the one it was
trained on (same fingerprint), and on every crop of any other dataset. ``--json`` prints exactly
one JSON object with exactly those six keys (NaN as null) on stdout, nothing else.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung evaluate --data runs/other-patients          # the shipped bundle on other patients
  naslung evaluate --bundle runs/bundle --data runs/data
  naslung evaluate --bundle runs/bundle --data runs/data --fold 2 --json
  naslung evaluate --bundle runs/bundle --data runs/external --all --fast --device cuda
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="metrics of an ensemble bundle on a prepared dataset",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--bundle", default=None,
                   help="bundle directory (naslung ensemble --out; default: the shipped models/lidc-voi-ensemble)")
    p.add_argument("--data", required=True, help="prepared dataset directory (naslung prepare --out)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fold", type=int, default=None, help="evaluate on this fold only")
    g.add_argument("--all", action="store_true", help="evaluate on every crop (warns if they trained the bundle)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the six metrics")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--fast", action="store_true", help="use the fast inference engine")
    p.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from naslung.data.dataset import PreparedDataset
    from naslung.ensemble import load_bundle
    from naslung.ensemble.evaluate import METRICS, choose_indices, evaluate_bundle

    from naslung.ensemble.bundle import default_bundle
    from naslung.ensemble.evaluate import match_crop_spec

    args.bundle = args.bundle or str(default_bundle())
    ens = load_bundle(args.bundle, device=args.device)
    ds, note = match_crop_spec(PreparedDataset.load(args.data, mmap=True), ens.spec)
    if note and not args.json:
        print(f"note: {note}")
    idx, subset = choose_indices(ds, ens.manifest, args.fold, args.all)
    predictor = ens.fast(args.device) if args.fast else ens
    ev = evaluate_bundle(predictor, ds, idx, batch_size=args.batch_size, device=args.device, subset=subset)
    if args.json:
        print(json.dumps({k: ev.metrics[k] for k in METRICS}))
        return 0
    print(f"bundle {args.bundle} (version {ens.version}, {len(ens)} members, rule {ens.rule}) on "
          f"{args.data}: {subset}")
    print(format_metrics(ev.metrics))
    return 0


def format_metrics(metrics: dict) -> str:
    """The metric lines this command prints (also used by ``naslung demo``)."""
    from naslung.ensemble.evaluate import METRICS

    def cell(k: str) -> str:
        v = metrics.get(k)
        return "n/a" if v is None else str(v) if k == "n" else f"{v:.4f}"

    return "\n".join(f"  {k:<12} {cell(k)}" for k in METRICS)
