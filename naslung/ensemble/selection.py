"""Choosing K ensemble members: top by validation metric, Pareto members, or diversity-aware greedy.

The scoring functions are pure (lists and arrays in, indices out) so they are tested on known
inputs; :func:`load_search_candidates` reads a search run directory (``RUN/trials/*.json`` records,
``pareto.csv``) into :class:`Candidate` objects.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from naslung.models.config import ModelConfig

log = logging.getLogger(__name__)

SELECTIONS = ("top", "pareto", "diverse")


@dataclass
class Candidate:
    name: str
    config: ModelConfig
    metrics: dict[str, Any] = field(default_factory=dict)  # val_accuracy, val_auc, latency_ms, flops ...
    pareto: bool = False
    val_proba: np.ndarray | None = None  # (N_val,) P(malignant) on the search's validation fold
    info: dict[str, Any] = field(default_factory=dict)


def _num(x: Any, default: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def rank(cands: Sequence[Candidate], metric: str = "val_accuracy") -> list[int]:
    """Indices best first: ``metric`` desc, then validation AUC desc, then latency asc, then input order."""
    def key(i: int) -> tuple:
        m = cands[i].metrics
        return (-_num(m.get(metric), -math.inf), -_num(m.get("val_auc"), -1.0),
                _num(m.get("latency_ms"), math.inf), i)

    return sorted(range(len(cands)), key=key)


def _unique(order: Sequence[int], cands: Sequence[Candidate]) -> list[int]:
    """Drop later candidates whose architecture repeats an earlier one (retraining it adds nothing)."""
    seen, out = set(), []
    for i in order:
        k = cands[i].config.key + f"|{cands[i].config.stem_width}"
        if k not in seen:
            seen.add(k)
            out.append(i)
    return out


def select_top(cands: Sequence[Candidate], k: int, metric: str = "val_accuracy") -> list[int]:
    """The k best distinct architectures by ``metric``."""
    return _unique(rank(cands, metric), cands)[:k]


def select_pareto(cands: Sequence[Candidate], k: int, metric: str = "val_accuracy") -> list[int]:
    """Pareto-front members first (best ``metric`` first), topped up with the best of the rest."""
    order = rank(cands, metric)
    front = _unique([i for i in order if cands[i].pareto], cands)
    if len(front) < k:
        log.info("Pareto front has %d distinct members; filling up to %d by %s", len(front), k, metric)
    return _unique(front + [i for i in order if not cands[i].pareto], cands)[:k]


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of crops on which two members' hard decisions (malignant iff p > 0.5, the project's
    one decision rule) differ."""
    return float(np.mean((np.asarray(a) > 0.5) != (np.asarray(b) > 0.5)))


def select_diverse(proba_pos: np.ndarray, y: np.ndarray, k: int, *, diversity: float = 0.5,
                   first: int | None = None) -> list[int]:
    """Greedy forward selection on validation predictions.

    Start from ``first`` (default: the lowest validation log-loss), then repeatedly add the
    candidate maximising ``-logloss(mean of chosen + candidate) + diversity * mean disagreement
    with the chosen``. With ``diversity = 0`` this is plain greedy ensemble selection (Caruana et
    al. 2004, without replacement); larger values prefer members that err on different crops.
    """
    p = np.asarray(proba_pos, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or p.shape[1] != y.shape[0]:
        raise ValueError(f"need (C, N) probabilities and N labels, got {p.shape} and {y.shape}")
    c = p.shape[0]
    k = min(k, c)
    if k <= 0:
        return []
    chosen = [int(first) if first is not None else int(np.argmin([_log_loss(q, y) for q in p]))]
    while len(chosen) < k:
        best, best_score = -1, -math.inf
        for j in range(c):
            if j in chosen:
                continue
            ens = p[chosen + [j]].mean(0)
            div = float(np.mean([disagreement(p[j], p[i]) for i in chosen]))
            score = -_log_loss(ens, y) + diversity * div
            if score > best_score + 1e-12:
                best, best_score = j, score
        chosen.append(best)
    return chosen


class SelectionOnTestFold(ValueError):
    """Ranking these candidates by their search metric would select on the bundle's test fold."""


def check_search_folds(cands: Sequence[Candidate], test_fold: int, n_folds: int) -> list[str]:
    """Refuse a search whose validation fold is the bundle's test fold; return notes on weaker issues.

    A search trial run with ``fold=f`` trains on the folds other than ``f`` and ``(f + 1) % k`` and
    reports its metrics on the validation fold ``(f + 1) % k``. Ranking candidates by those metrics
    for a bundle whose test fold is that same fold picks members by test-fold accuracy, and the
    bundle's "held-out" numbers are then optimistic -- silently. Raises :class:`SelectionOnTestFold`
    naming the trials; returns notes (printed by the CLI) when the test fold was one of the search's
    training folds or when a candidate does not say which fold it used.
    """
    if n_folds < 3:
        raise ValueError(f"need at least 3 folds, got {n_folds}")
    bad, trained_on_test, unknown = [], [], []
    for c in cands:
        val_folds = c.info.get("val_folds")
        if isinstance(val_folds, (list, tuple)) and val_folds:  # inner-fold objective (trial.inner_folds)
            try:
                vf = {int(v) for v in val_folds}
            except (TypeError, ValueError):
                unknown.append(c.name)
                continue
            outer = c.info.get("fold")
            if test_fold in vf:
                bad.append((c.name, int(outer) if outer is not None else -1))
            elif outer is None or int(outer) != test_fold:
                trained_on_test.append(c.name)
            continue
        f = c.info.get("fold")
        if f is None or isinstance(f, bool):
            unknown.append(c.name)
            continue
        try:
            f = int(f)
        except (TypeError, ValueError):
            unknown.append(c.name)
            continue
        if (f + 1) % n_folds == test_fold:
            bad.append((c.name, f))
        elif f != test_fold:
            trained_on_test.append(c.name)
    if bad:
        folds = sorted({f for _, f in bad})
        names = ", ".join(n for n, _ in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise SelectionOnTestFold(
            f"the search validated {len(bad)} candidate(s) ({names}) on fold {test_fold}, which is this bundle's "
            f"test fold (search fold {folds[0]}: its validation folds include {test_fold}); ranking them by their "
            f"search metric would select members on the test fold. Build the bundle with --fold {folds[0]} (the "
            f"search's own held-out fold), or search with a different fold.")
    notes = []
    if trained_on_test:
        notes.append(f"{len(trained_on_test)} search candidate(s) were trained on folds that include this "
                     f"bundle's test fold {test_fold}; the architecture choice saw those crops (the retrained "
                     f"members do not). Use --fold equal to the search's fold for a clean estimate.")
    if unknown:
        notes.append(f"{len(unknown)} candidate(s) do not record the fold they were searched on; cannot check "
                     f"that their ranking metric is not on test fold {test_fold}.")
    return notes


# ----------------------------------------------------------------------------- search run dir
def load_search_candidates(run_dir: str | Path) -> list[Candidate]:
    """Succeeded trials of a search run (``RUN/trials/*.json``), Pareto flags from ``pareto.csv``.

    A record may carry its validation predictions (``val_proba``: P(malignant) per validation crop,
    with ``val_ids``); they are kept for diversity-aware selection. When the run has no trial
    records but has ``top/<rank>.json`` configs, those are used (rank order, no metrics).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"search run {run} does not exist")
    pareto_ids: set[str] = set()
    if (run / "pareto.csv").is_file():
        with open(run / "pareto.csv", newline="") as f:
            pareto_ids = {str(r.get("trial_id")) for r in csv.DictReader(f)}
    cands = []
    for path in sorted((run / "trials").glob("*.json")) if (run / "trials").is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable trial record %s: %s", path, e)
            continue
        if rec.get("status") != "SUCCEEDED" or "model" not in rec:
            continue
        try:
            cfg = ModelConfig.from_dict(rec["model"])
        except (TypeError, ValueError) as e:
            log.warning("skipping trial %s with an invalid model config: %s", path.name, e)
            continue
        tid = str(rec.get("trial_id", path.stem))
        vp = rec.get("val_proba")
        cands.append(Candidate(
            name=f"trial-{rec.get('seq', len(cands))}", config=cfg,  # NNI's trial id (random) stays in info
            metrics={k: v for k, v in rec.items() if k.startswith("val_") and k not in ("val_proba", "val_ids")}
            | {k: rec.get(k) for k in ("latency_ms", "flops", "params")},
            pareto=tid in pareto_ids,
            val_proba=np.asarray(vp, dtype=np.float64) if vp is not None else None,
            info={"search_run": str(run), "trial_id": tid, "seq": rec.get("seq"), "fold": rec.get("fold"),
                  "val_folds": rec.get("val_folds"),
                  "val_ids": rec.get("val_ids")}))
    if not cands and (run / "top").is_dir():
        tops = sorted((run / "top").glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 1 << 30)
        for r, path in enumerate(tops, start=1):
            cands.append(Candidate(name=f"top{r}", config=ModelConfig.from_file(path),
                                   metrics={"val_accuracy": -r}, info={"search_run": str(run), "top_file": path.name}))
    if not cands:
        raise FileNotFoundError(f"{run}: no succeeded trials in trials/*.json and no top/*.json configs "
                                f"(is this a `naslung search` run directory?)")
    return cands
