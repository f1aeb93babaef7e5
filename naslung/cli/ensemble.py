"""``naslung ensemble``: choose K members, retrain them on one fold's training split, write a bundle.

Members come from a search run (``--search RUN``: top by validation metric, the Pareto front, or a
diversity-aware greedy choice), from model config files (``--configs``) or registered names
(``--models``). Each is retrained on the training folds of ``--fold`` (validation = next fold for
early stopping, weights and selection; the test fold is predicted once). The bundle records the
members' configs and metrics, the training-data fingerprint, the rule and every weight's SHA-256.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung ensemble --search runs/search --data runs/data --top 5 --out runs/bundle
  naslung ensemble --search runs/search --data runs/data --top 3 --select diverse --pool 6 --rule weighted --out runs/b2
  naslung ensemble --models tiny tiny tiny --data runs/data --epochs 3 --rule vote --out runs/tiny-bundle
  naslung ensemble --configs runs/search/top/1.json runs/search/top/2.json --data runs/data --out runs/b3
  naslung ensemble --search runs/search-voi --data runs/voi5_fov --metric val_auc --top 3 --max-params 5000000 \
      --all-data --train-config examples/recipes/lidc-voi-softaux-m1.json --out models/lidc-voi-ensemble
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ensemble", help="retrain selected models and write a checksummed bundle",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--search", help="search run directory (naslung search --out)")
    src.add_argument("--configs", nargs="+", help="model config JSON files")
    src.add_argument("--models", nargs="+", help="registered model names (see `naslung profile`)")
    p.add_argument("--data", required=True, help="prepared dataset directory with folds")
    p.add_argument("--top", type=int, default=5, help="K, the number of members (with --search)")
    p.add_argument("--select", choices=("top", "pareto", "diverse"), default="top",
                   help="how to pick K members from the search")
    p.add_argument("--metric", default="val_accuracy", help="search record field to rank by (val_accuracy, val_auc)")
    p.add_argument("--max-params", type=int, default=None,
                   help="--search (top, pareto): the members' parameters together stay under this; a candidate "
                        "that does not fit is passed over for the next best that does (default: no budget)")
    p.add_argument("--pool", type=int, default=None,
                   help="--select diverse: train this many top candidates, keep the K most useful (default 2K)")
    p.add_argument("--diversity", type=float, default=0.5, help="--select diverse: weight of disagreement")
    p.add_argument("--rule", choices=("mean", "vote", "weighted"), default="mean",
                   help="mean probability, majority vote (the paper's), or validation-fitted weights")
    p.add_argument("--fold", type=int, default=0, help="outer fold: its test fold is held out")
    p.add_argument("--all-data", action="store_true",
                   help="no held-out test fold: members train on every fold but the validation fold "
                        "(--fold + 1); for a shipped model whose test figures come from CV")
    p.add_argument("--train-config", default=None, metavar="JSON",
                   help="training recipe (TrainConfig JSON, e.g. examples/recipes/lidc-voi-softaux-m1.json); "
                        "replaces --epochs/--batch-size/--lr/--patience, keeps --seed and --device")
    p.add_argument("--fov-mm", default=None, metavar="X,Y,Z",
                   help="field-of-view box for the crop spec (only if the data has none or the same); "
                        "recorded in the bundle so the server applies it")
    p.add_argument("--epochs", type=int, default=60, help="training epochs per member (most; see --patience)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW, cosine schedule)")
    p.add_argument("--patience", type=int, default=15, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="member i trains with seed + i")
    p.add_argument("--version", default=None, help="bundle version string (default: content hash)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="bundle directory to write")
    return p


def _fmt(m, k) -> str:
    v = (m or {}).get(k)
    return "  n/a" if v is None or v != v else f"{v:.3f}"


def _candidates(args, ds):
    """(candidates, train_pool_then_select, selection note)."""
    from naslung.ensemble.selection import (Candidate, check_search_folds, load_search_candidates, select_pareto,
                                            select_top)
    from naslung.models import get_config
    from naslung.models.config import ModelConfig

    if args.models:
        return [Candidate(f"{n}-{i}", get_config(n), info={"model": n}) for i, n in enumerate(args.models)], \
            False, "given (--models)"
    if args.configs:
        return [Candidate(f"{i}-{(c := ModelConfig.from_file(p)).name or 'config'}", c, info={"config_file": p})
                for i, p in enumerate(args.configs)], False, "given (--configs)"
    cands = load_search_candidates(args.search)
    # Before any ranking: the search's validation fold must not be this bundle's test fold.
    for note in check_search_folds(cands, args.fold, int(ds.folds.max()) + 1):
        print(f"note: {note}")
    k = args.top
    if args.select == "diverse":
        pool = [cands[i] for i in select_top(cands, args.pool or 2 * k, args.metric)]
        chosen = _diverse_from_search(pool, ds, k, args.diversity, args.fold)
        if chosen is not None:
            return [pool[i] for i in chosen], False, \
                f"diverse on search validation predictions (pool of {len(pool)}: {[c.name for c in pool]})"
        return pool, True, f"diverse (retrained pool of {len(pool)})"
    pick = select_pareto if args.select == "pareto" else select_top
    chosen = [cands[i] for i in pick(cands, k, args.metric, max_params=args.max_params)]
    budget = f" within {args.max_params:,} parameters" if args.max_params else ""
    return chosen, False, f"{args.select} by {args.metric}{budget}"


def _diverse_from_search(pool, ds, k: int, diversity: float, fold: int):
    """Greedy selection on the search's own validation predictions, when every candidate has them
    for the same crops of this dataset and none of those crops is in the bundle's test fold;
    None otherwise (then the pool is retrained and selected on the bundle's validation fold)."""
    import numpy as np

    from naslung.data.folds import split_fold
    from naslung.ensemble.selection import select_diverse

    ids = [tuple(c.info.get("val_ids") or ()) for c in pool]
    if any(c.val_proba is None for c in pool) or not ids[0] or len(set(ids)) != 1 \
            or len(ids[0]) != len(pool[0].val_proba):
        return None
    label = dict(zip(ds.ids, ds.labels.tolist()))
    if not all(i in label for i in ids[0]):
        return None
    test_ids = {ds.ids[i] for i in split_fold(ds.folds, fold).test}
    if test_ids.intersection(ids[0]):
        print(f"note: the search validated on crops of test fold {fold}; retraining the pool instead")
        return None
    y = np.array([label[i] for i in ids[0]])
    return select_diverse(np.stack([c.val_proba for c in pool]), y, k, diversity=diversity)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from naslung.data.dataset import PreparedDataset
    from naslung.ensemble.build import build_bundle
    from naslung.train import TrainConfig

    out = Path(args.out)
    if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
        # Before any training: finding this after an hour of it lost the hour.
        raise ValueError(f"--out {out} already exists and is not empty; choose another directory or pass --force "
                         f"to replace it")
    ds = PreparedDataset.load(args.data)
    if args.fov_mm:
        from naslung.data.spec import parse_fov

        ds = ds.with_field_of_view(parse_fov(args.fov_mm))
    if ds.summary()["folds"] < 3:
        raise ValueError(f"{args.data}: needs at least 3 assigned folds (naslung prepare --folds K)")
    cands, diverse, selection = _candidates(args, ds)
    k = args.top if (args.search or diverse) else len(cands)
    if len(cands) < k and not diverse:
        print(f"note: only {len(cands)} distinct candidates available; building a {len(cands)}-member bundle")
        k = len(cands)
    if args.rule == "vote" and k % 2 == 0:
        raise ValueError(f"majority vote with an even number of members ({k}) can tie; choose an odd K")
    if args.train_config:
        tcfg = TrainConfig.from_file(args.train_config, seed=args.seed, device=args.device)
    else:
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                           seed=args.seed, device=args.device)
    held = "no test fold (--all-data)" if args.all_data else f"fold {args.fold} held out"
    print(f"data {args.data}: {len(ds)} crops, {held}; crops {ds.spec.describe()}; members: {selection}; training "
          f"{len(cands)} candidate(s) on {tcfg.resolved_device()}, rule {args.rule}")

    def on_member(i, n, r):
        print(f"  [{i + 1}/{n}] {r['name']:<24} {r['arch']:<34} val acc {_fmt(r['val'], 'accuracy')} "
              f"auc {_fmt(r['val'], 'auc')}", flush=True)

    t0 = time.perf_counter()
    rep = build_bundle(ds, cands, tcfg, args.out, k=k, rule=args.rule, fold=args.fold, diverse=diverse,
                       diversity=args.diversity, version=args.version, overwrite=args.force,
                       progress=not args.no_progress, on_member=on_member, selection=selection,
                       all_data=args.all_data)
    keys = ("accuracy", "sensitivity", "specificity", "f1", "auc")
    head = f"{'member':<24} {'weight':>6} " + " ".join(f"{'val ' + k[:4]:>9}" for k in ("accuracy", "auc")) \
        + " " + " ".join(f"{'test ' + k[:4]:>9}" for k in keys)
    print(head)
    print("-" * len(head))
    for i, m in enumerate(rep.members):
        w = f"{rep.weights[i]:.3f}" if rep.weights else "-"
        print(f"{m['name']:<24} {w:>6} " + " ".join(f"{_fmt(m['val'], k):>9}" for k in ("accuracy", "auc"))
              + " " + " ".join(f"{_fmt(m['test'], k):>9}" for k in keys))
    print("-" * len(head))
    print(f"{'ensemble (' + rep.rule + ')':<24} {'':>6} "
          + " ".join(f"{_fmt(rep.ensemble_val, k):>9}" for k in ("accuracy", "auc")) + " "
          + " ".join(f"{_fmt(rep.ensemble_test, k):>9}" for k in keys))
    print(f"wrote bundle {rep.bundle} (version {rep.version}) in {time.perf_counter() - t0:.1f} s")
    return 0
