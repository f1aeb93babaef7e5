"""Patient-grouped cross-validation and the run directory it leaves behind.

``RUN/`` layout::

    run.json            model + train config, dataset fingerprint and crop spec, device, timings
    fold_K/             checkpoint of outer fold K (model.safetensors + checkpoint.json) + history.csv
    cv_metrics.json     per-fold validation and test metrics, mean +- std (ddof=1), pooled test metrics
    confusion_matrix.csv pooled test predictions, rows true benign/malignant, columns predicted
    folds.csv           one row per test prediction: id, patient_id, fold, label, p_malignant, pred
"""
from __future__ import annotations

import csv
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from naslung.models.config import ModelConfig
from naslung.train.config import TrainConfig
from naslung.train.data import DeviceData
from naslung.train.trainer import FoldResult, train_fold

log = logging.getLogger(__name__)


@dataclass
class CVResult:
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    folds: list[FoldResult]
    metrics: dict[str, Any]               # {"per_fold": [...], "mean", "std", "pooled", "val_mean"}
    confusion: list[list[int]]            # pooled over test folds
    predictions: list[dict[str, Any]]     # rows of folds.csv
    out: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def cross_validate(ds, model_cfg: ModelConfig, train_cfg: TrainConfig, folds: Sequence[int] | None = None,
                   out: str | Path | None = None, *, progress: bool = True, build=None) -> CVResult:
    """Train every outer fold in ``folds`` (default: all) and pool their test predictions.

    ``ds`` must carry fold ids (``naslung prepare --folds K`` or ``ds.set_folds``).
    """
    from naslung.train.metrics import binary_metrics, confusion, json_safe, predict_label, summarize

    k = int(ds.folds.max()) + 1 if len(ds) else 0
    if len(ds) == 0 or ds.folds.min() < 0:
        raise ValueError("dataset has no folds assigned; run `naslung prepare --folds K` or pass --folds K")
    fold_ids = list(range(k)) if folds is None else [int(f) for f in folds]
    bad = [f for f in fold_ids if not 0 <= f < k]
    if bad:
        raise ValueError(f"folds {bad} out of range 0..{k - 1}")
    device = train_cfg.resolved_device()
    t0 = time.perf_counter()
    data = DeviceData.from_dataset(ds, device)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    results: list[FoldResult] = []
    for f in fold_ids:
        res = train_fold(ds, model_cfg, train_cfg, f, progress=progress, data=data, build=build)
        results.append(res)
        log.info("fold %d: val auc %.3f test acc %.3f auc %.3f", f, res.val_metrics["auc"],
                 res.test_metrics["accuracy"], res.test_metrics["auc"])
        if out_dir is not None:
            _write_fold(out_dir / f"fold_{f}", res, ds)

    ids, pids, labels = ds.ids, ds.patient_ids, ds.labels
    predictions = []
    for r in results:
        for i, p in zip(r.test_idx.tolist(), r.test_proba[:, 1].tolist()):
            predictions.append({"id": ids[i], "patient_id": pids[i], "fold": r.fold, "label": int(labels[i]),
                                "p_malignant": p, "pred": int(predict_label(p))})
    y_all = np.array([p["label"] for p in predictions])
    p_all = np.array([p["p_malignant"] for p in predictions])
    per_fold = [{"fold": r.fold, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
                 "seconds": r.seconds, "val": r.val_metrics, "test": r.test_metrics} for r in results]
    summary = summarize([r.test_metrics for r in results])
    metrics = {
        "per_fold": per_fold,
        "mean": summary["mean"],
        "std": summary["std"],
        "val_mean": summarize([r.val_metrics for r in results])["mean"],
        "pooled": binary_metrics(y_all, p_all),
        "n_folds": k,
        "folds_run": fold_ids,
    }
    cm = confusion(y_all, p_all)
    result = CVResult(model_cfg, train_cfg, results, metrics, cm, predictions, out_dir)
    if out_dir is not None:
        run = {
            "model": model_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "dataset": {"fingerprint": ds.fingerprint(), "source": ds.source, "summary": ds.summary(),
                        "crop_spec": ds.spec.to_dict()},
            "device": device_description(device),
            "torch": torch.__version__,
            "seconds": time.perf_counter() - t0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (out_dir / "run.json").write_text(json.dumps(json_safe(run), indent=2) + "\n")
        (out_dir / "cv_metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
        with open(out_dir / "confusion_matrix.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["true\\pred", "benign", "malignant"])
            w.writerow(["benign", *cm[0]])
            w.writerow(["malignant", *cm[1]])
        with open(out_dir / "folds.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "patient_id", "fold", "label", "p_malignant", "pred"])
            w.writeheader()
            for row in predictions:
                w.writerow({**row, "p_malignant": f"{row['p_malignant']:.6f}"})
    return result


def _write_fold(directory: Path, res: FoldResult, ds) -> None:
    from naslung.train.checkpoint import save_checkpoint

    ids = ds.ids
    save_checkpoint(directory, res.model_cfg, res.state_dict,
                    {"val": res.val_metrics, "test": res.test_metrics},
                    extra={**res.extra, "fold": res.fold, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                           "train": res.train_cfg.to_dict(), "dataset_fingerprint": ds.fingerprint(),
                           "crop_spec": ds.spec.to_dict(),
                           "split_ids": {"train": [ids[i] for i in res.train_idx],
                                         "val": [ids[i] for i in res.val_idx],
                                         "test": [ids[i] for i in res.test_idx]}})
    if res.history:
        with open(directory / "history.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(res.history[0]))
            w.writeheader()
            w.writerows(res.history)


def seed_ensemble_cv(ds, model_cfg: ModelConfig, train_cfg: TrainConfig, seeds: Sequence[int] = (0,), *,
                     out: str | Path | None = None, progress: bool = True, build=None,
                     tta: bool = False) -> dict[str, Any]:
    """Cross-validate ``len(seeds)`` networks per outer fold and score their mean probability.

    This is how an ensemble of members with one recipe is judged on the same folds: each seed is a
    full :func:`cross_validate` (test fold f, validation fold f+1, train the rest), and the members'
    P(malignant) for a test crop are averaged. With ``tta``, each member's test probability is
    also computed averaged over the 8 axis flips (reported beside, never used for choices).

    Returns:
        ``{"single": [per-seed mean/std/pooled], "ensemble": {"per_fold", "mean", "std", "pooled"},
        "ensemble_tta": same or None, "proba": {crop index: mean P}, "lambda_final": [...]}``
    """
    from naslung.data.folds import split_fold
    from naslung.models import build_model
    from naslung.train.metrics import binary_metrics, summarize
    from naslung.train.trainer import predict_proba_tta

    make = build or build_model
    n = len(ds)
    k = int(ds.folds.max()) + 1
    sums = np.zeros(n)
    sums_tta = np.zeros(n)
    single, lambdas = [], []
    data = DeviceData.from_dataset(ds, train_cfg.resolved_device()) if tta else None
    for seed in seeds:
        cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "seed": int(seed)})
        sub = None if out is None else Path(out) / f"seed_{seed}"
        cv = cross_validate(ds, model_cfg, cfg, out=sub, progress=progress, build=build)
        single.append({"seed": int(seed), "mean": cv.metrics["mean"], "std": cv.metrics["std"],
                       "pooled": cv.metrics["pooled"]})
        for r in cv.folds:
            sums[r.test_idx] += r.test_proba[:, 1]
            lambdas.append(r.extra.get("lambda_final"))
            if data is not None:
                model = make(model_cfg)
                model.load_state_dict(r.state_dict)
                model = model.to(data.device).eval()
                x = data.x[torch.as_tensor(r.test_idx, device=data.device)]
                sums_tta[r.test_idx] += predict_proba_tta(model, x, cfg.eval_batch_size, cfg.amp)[:, 1].cpu().numpy()
    y = ds.labels

    def score(p: np.ndarray) -> dict[str, Any]:
        per_fold = []
        for f in range(k):
            t = split_fold(ds.folds, f).test
            m = binary_metrics(y[t], p[t])
            m["fold"] = f
            per_fold.append(m)
        s = summarize(per_fold)
        return {"per_fold": per_fold, "mean": s["mean"], "std": s["std"], "pooled": binary_metrics(y, p)}

    mean_p = sums / len(seeds)
    return {"single": single, "ensemble": score(mean_p),
            "ensemble_tta": score(sums_tta / len(seeds)) if tta else None,
            "proba": {int(i): float(v) for i, v in enumerate(mean_p)},
            "proba_tta": {int(i): float(v) for i, v in enumerate(sums_tta / len(seeds))} if tta else None,
            "lambda_final": lambdas,
            "seeds": [int(s) for s in seeds]}
