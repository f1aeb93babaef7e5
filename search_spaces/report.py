"""The search run directory: per-trial records in, ``trials.csv``, ``pareto.csv``, a plot and top configs out.

Each trial writes ``RUN/trials/<seq>_<trial_id>.json`` itself (see :mod:`search_spaces.trial`), so
the report can be rebuilt from disk at any time (``naslung search --report-only``), without NNI.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from naslung.models.config import ModelConfig
from search_spaces.pareto import pareto_front

log = logging.getLogger(__name__)

TRIAL_COLUMNS = ("seq", "trial_id", "status", "arch", "stages", "n_blocks", "head", "cbam", "val_accuracy",
                 "val_auc", "val_sensitivity", "val_specificity", "val_f1", "val_n", "params", "flops",
                 "latency_ms", "latency_device", "lr", "batch_size", "epochs", "margin", "epochs_run", "train_seconds",
                 "trial_seconds", "device", "inner_folds", "steps_planned", "stopped_at_step", "objective_at_stop",
                 "seconds_saved_est")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """All trial records under ``run_dir/trials``, ordered by sequence number."""
    records = []
    for p in sorted(Path(run_dir, "trials").glob("*.json")):
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable trial record %s: %s", p, e)
    return sorted(records, key=lambda r: (int(r.get("seq", 0)), str(r.get("trial_id", ""))))


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def rank_records(records: Sequence[dict[str, Any]], objective: str = "val_accuracy") -> list[dict[str, Any]]:
    """Succeeded records, best first: objective desc, then AUC desc, then latency asc."""
    ok = [r for r in records if r.get("status") == "SUCCEEDED" and _finite(r.get(objective))]

    def key(r: dict[str, Any]) -> tuple[float, float, float]:
        auc = float(r["val_auc"]) if _finite(r.get("val_auc")) else -1.0
        lat = float(r["latency_ms"]) if _finite(r.get("latency_ms")) else math.inf
        return (-float(r[objective]), -auc, lat)

    return sorted(ok, key=key)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: (json.dumps(r[c]) if isinstance(r.get(c), (list, dict)) else r.get(c, ""))
                        for c in columns})


def plot_pareto(records: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], path: Path,
                objective: str = "val_accuracy") -> Path | None:
    """Scatter of every trial (latency vs objective) with the Pareto front drawn; Agg backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the GPU box may lack matplotlib: the CSVs are the result, the plot a view
        log.warning("matplotlib is not installed; %s not written", path)
        return None
    ok = [r for r in records if _finite(r.get(objective)) and _finite(r.get("latency_ms"))]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    if ok:
        sizes = [8 + 40 * math.log10(max(float(r.get("params") or 1), 1)) / 7 for r in ok]
        ax.scatter([float(r["latency_ms"]) for r in ok], [float(r[objective]) for r in ok], s=sizes,
                   c="#9aa5b1", label=f"trials ({len(ok)})", edgecolors="none")
    if front:
        xs = [float(r["latency_ms"]) for r in front]
        ys = [float(r[objective]) for r in front]
        ax.step(xs, ys, where="post", color="#c0392b", lw=1.2)
        ax.scatter(xs, ys, color="#c0392b", s=30, zorder=3, label=f"Pareto front ({len(front)})")
        for r in front:
            ax.annotate(str(r.get("arch", "")).split("|")[0], (float(r["latency_ms"]), float(r[objective])),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    dev = next((r.get("latency_device") for r in ok if r.get("latency_device")), "?")
    ax.set_xlabel(f"latency (ms, {dev})")
    ax.set_ylabel(objective.replace("_", " ") + " (validation fold)")
    ax.set_title("NASLung search: accuracy vs latency")
    ax.grid(alpha=0.3)
    if ok or front:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path, objective: str = "val_accuracy", top_k: int = 5) -> dict[str, Any]:
    """Write trials.csv, pareto.csv, pareto.png and top/<rank>.json from the trial records on disk."""
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    _write_csv(run_dir / "trials.csv", records, TRIAL_COLUMNS)
    ok = [r for r in records if r.get("status") == "SUCCEEDED"]
    idx = pareto_front(ok, maximize=(objective,), minimize=("latency_ms",))
    front = [ok[i] for i in idx]
    _write_csv(run_dir / "pareto.csv", front, TRIAL_COLUMNS)
    png = plot_pareto(ok, front, run_dir / "pareto.png", objective)

    top_dir = run_dir / "top"
    top_dir.mkdir(exist_ok=True)
    for old in top_dir.glob("*.json"):
        old.unlink()
    ranked = rank_records(records, objective)[:top_k]
    for rank, r in enumerate(ranked, start=1):
        cfg = ModelConfig.from_dict({**r["model"], "name": f"search-top{rank}"})
        # The plain ModelConfig JSON: `naslung train --config top/1.json` and `naslung ensemble --configs` accept it.
        (top_dir / f"{rank}.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    early = [r for r in records if r.get("status") == "EARLY_STOPPED"]
    summary = {
        "trials": len(records),
        "succeeded": len(ok),
        "early_stopped": len(early),
        "failed": len(records) - len(ok) - len(early),
        **early_stop_savings(records),
        "pareto": len(front),
        "top": len(ranked),
        "objective": objective,
        "plot": str(png) if png else None,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def early_stop_savings(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Training seconds the assessor saved: each stopped trial's unrun steps at its own seconds per step.

    Set against the training seconds every trial actually spent, so the report can say what share of
    the search's GPU time early stopping avoided (an estimate: a stopped trial might have been
    stopped by the trainer's own patience later anyway; search trials run with patience 0).
    """
    saved = sum(float(r.get("seconds_saved_est") or 0.0) for r in records if r.get("status") == "EARLY_STOPPED")
    spent = sum(float(r.get("train_seconds") or 0.0) for r in records)
    return {"train_seconds_spent": round(spent, 1), "early_stop_seconds_saved_est": round(saved, 1),
            "early_stop_saved_fraction_est": round(saved / (saved + spent), 4) if saved + spent > 0 else None}


def rebuild_report(run_dir: str | Path) -> dict[str, Any]:
    """``naslung search --report-only``: the report of the trials on disk, with the run's own objective and top_k.

    Raises ``FileNotFoundError`` for a missing directory and ``ValueError`` when no trial has finished
    (no record under RUN/trials): an empty report would look like a search that found nothing.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such search run directory")
    records = load_records(run_dir)
    if not records:
        running = sorted((run_dir / "progress").glob("*.json")) if (run_dir / "progress").is_dir() else []
        raise ValueError(f"{run_dir}: no trial has finished (no record in {run_dir / 'trials'}), so there is "
                         f"nothing to report" + (f"; {len(running)} trial(s) started training there: is the "
                                                 f"search still running?" if running else
                                                 "; is this the --out of a search (naslung search or "
                                                 "nnictl with examples/search.yml)?"))
    objective, top_k = "val_accuracy", 5
    cfg_file = run_dir / "search_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
            objective = f"val_{(cfg.get('trial') or {}).get('objective', 'accuracy')}"
            top_k = int(cfg.get("top_k", top_k))
        except (ValueError, TypeError) as e:
            log.warning("ignoring unreadable %s: %s", cfg_file, e)
    return write_report(run_dir, objective=objective, top_k=top_k)
