"""Build a bundle by training: retrain the chosen members on one fold's training split, combine, save.

This is the only ensemble module that imports :mod:`naslung.train`; the server never imports it.
Every member trains on the same split of outer fold ``fold``: the training folds, early stopping and
checkpoint choice on the inner validation fold (``fold + 1``), the test fold (``fold``) predicted
once at the end. Weighted-rule weights and diversity-aware selection use validation predictions
only, so the test metrics recorded in the manifest stay honest.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from naslung.ensemble.bundle import BundleMember, save_bundle
from naslung.ensemble.rules import combine, fit_weights
from naslung.ensemble.selection import Candidate, select_diverse

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    bundle: Path
    version: str
    rule: str
    weights: list[float] | None
    members: list[dict[str, Any]] = field(default_factory=list)  # name, arch, val, test metrics
    ensemble_val: dict[str, Any] = field(default_factory=dict)
    ensemble_test: dict[str, Any] | None = None
    pool: list[str] = field(default_factory=list)


def build_bundle(ds, candidates: Sequence[Candidate], train_cfg, out: str | Path, *, k: int | None = None,
                 rule: str = "mean", fold: int = 0, diverse: bool = False, diversity: float = 0.5,
                 version: str | None = None, overwrite: bool = False, progress: bool = True,
                 selection: str | None = None, all_data: bool = False,
                 on_member: Callable[[int, int, dict], None] | None = None) -> BuildReport:
    """Train ``candidates`` on fold ``fold`` and write a bundle of ``k`` of them (default: all).

    With ``diverse``, all candidates are trained (the pool) and ``k`` are chosen greedily on their
    validation predictions (:func:`~naslung.ensemble.selection.select_diverse`); otherwise the
    candidates are the members, in order. Member ``i`` trains with seed ``train_cfg.seed + i``.
    ``selection`` is recorded in the manifest (how the candidates were chosen).

    With ``all_data`` there is no test fold: the members train on every fold but the validation
    fold (``fold + 1``, still used only for early stopping, weights and selection). That is the
    shipped model's recipe, whose test figures come from cross-validation instead.
    """
    from naslung.data.folds import split_fold
    from naslung.train import DeviceData
    from naslung.train.trainer import train_on_split
    from naslung.train.metrics import binary_metrics, json_safe

    if not candidates:
        raise ValueError("no candidate models to train")
    k = len(candidates) if k is None else int(k)
    if k < 1 or (not diverse and k > len(candidates)):
        raise ValueError(f"cannot choose {k} members from {len(candidates)} candidates")
    split = split_fold(ds.folds, fold)
    if all_data:
        split = dataclasses.replace(split, train=np.sort(np.concatenate([split.train, split.test])),
                                    test=split.test[:0])
    data = DeviceData.from_dataset(ds, train_cfg.resolved_device())
    y = ds.labels
    results = []
    for i, cand in enumerate(candidates):
        cfg = cand.config
        if cfg.in_size != ds.spec.size:
            cfg = dataclasses.replace(cfg, in_size=ds.spec.size)
        tcfg = dataclasses.replace(train_cfg, seed=train_cfg.seed + i)
        log.info("training member %d/%d %s (%s) on fold %d", i + 1, len(candidates), cand.name, cfg.key, fold)
        res = train_on_split(data, cfg, tcfg, split.train, split.val, split.test, fold=fold, progress=progress)
        results.append((cand, cfg, res))
        if on_member:
            on_member(i, len(candidates), {"name": cand.name, "arch": cfg.key, "val": res.val_metrics,
                                           "test": res.test_metrics})

    val_pos = np.stack([r.val_proba[:, 1] for _, _, r in results])
    y_val = y[split.val]
    if diverse:
        chosen = select_diverse(val_pos, y_val, k, diversity=diversity)
    else:
        chosen = list(range(k))
    results_k = [results[i] for i in chosen]
    val_pos = val_pos[chosen]
    weights = fit_weights(val_pos, y_val).tolist() if rule == "weighted" else None

    def pair(p: np.ndarray) -> np.ndarray:
        return np.stack([1 - p, p], axis=-1)

    ens_val = binary_metrics(y_val, combine(pair(val_pos), rule, weights)[:, 1])
    test_pos = np.stack([r.test_proba[:, 1] for _, _, r in results_k]) if len(split.test) else None
    ens_test = binary_metrics(y[split.test], combine(pair(test_pos), rule, weights)[:, 1]) \
        if test_pos is not None else None

    members, rows = [], []
    names_seen: set[str] = set()
    for cand, cfg, res in results_k:
        name = cand.name if cand.name not in names_seen else f"{cand.name}-{len(names_seen)}"
        names_seen.add(name)
        metrics = json_safe({"val": res.val_metrics, "test": res.test_metrics, "best_epoch": res.best_epoch,
                             "search": cand.metrics})
        info = json_safe({**cand.info, **res.extra, "seed": res.train_cfg.seed,
                          "train_seconds": round(res.seconds, 2)})
        members.append(BundleMember(name, cfg, res.state_dict, metrics=metrics, info=info))
        rows.append({"name": name, "arch": cfg.key, "val": res.val_metrics, "test": res.test_metrics})
    training = json_safe({
        "fold": fold, "val_fold": int(ds.folds[split.val[0]]) if len(split.val) else None,
        "test_fold": None if all_data else fold, "all_data": all_data,
        "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
        "train_config": train_cfg.to_dict(),
        "selection": selection or ("diverse (retrained pool)" if diverse else "given"),
        "pool": [c.name for c in candidates],
        "ensemble_val": ens_val, "ensemble_test": ens_test,
    })
    training_data = {"fingerprint": ds.fingerprint(), "source": ds.source, "n": len(ds),
                     "folds": ds.summary()["folds"]}
    path = save_bundle(out, members, ds.spec, rule, weights, version=version, training_data=training_data,
                       training=training, overwrite=overwrite)
    from naslung.ensemble.bundle import read_manifest

    man = read_manifest(path, verify=False)
    return BuildReport(bundle=path, version=man["version"], rule=rule, weights=weights, members=rows,
                       ensemble_val=ens_val, ensemble_test=ens_test, pool=[c.name for c in candidates])
