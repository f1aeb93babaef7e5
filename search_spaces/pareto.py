"""Partial-order pruning and Pareto extraction, as pure functions (no NNI, no torch).

The partial order (NAS-Lung, after Li et al. "Partial Order Pruning", CVPR 2019): architecture
``a`` precedes ``b`` (``a <= b``) when ``a`` can be obtained from ``b`` by deleting blocks inside
stages and narrowing blocks -- same head, CBAM variant and number of stages. The search assumes
that going up the order costs latency and buys accuracy: ``a <= b`` implies ``lat(a) <= lat(b)``
and ``acc(a) <= acc(b)``.

Pruning rule (fei-aiart/NAS-Lung ``ResSearchSpace.main_method``): for a trained ``M`` dominated by
a trained ``Y`` (``acc(Y) > acc(M)`` and ``lat(Y) < lat(M)``), every untrained ``c <= M`` whose
latency exceeds ``lat(Y)`` is dominated by ``Y`` (``acc(c) <= acc(M) < acc(Y)``, ``lat(c) > lat(Y)``)
and is never trained. Latency of an untrained candidate is either measured (cheap: a forward
pass, as in the paper) or, when not measured, bounded below by the largest latency of a trained
architecture below it in the order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from search_spaces.space import Arch


def stage_embeds(small: Sequence[int], big: Sequence[int]) -> bool:
    """Can ``small`` be made from ``big`` by deleting blocks and narrowing the rest?

    ``big`` is non-decreasing, so the best embedding aligns ``small`` with the last blocks of
    ``big`` (each of those is at least as wide as any earlier choice).
    """
    if len(small) > len(big):
        return False
    tail = big[len(big) - len(small):]
    return all(a <= b for a, b in zip(small, tail))


def precedes(a: Arch, b: Arch) -> bool:
    """``a <= b`` in the partial order (narrower and/or shallower, or equal)."""
    if a.head != b.head or a.cbam != b.cbam or len(a.stages) != len(b.stages):
        return False
    return all(stage_embeds(sa, sb) for sa, sb in zip(a.stages, b.stages))


@dataclass(frozen=True)
class Trained:
    """A trained architecture with its validation accuracy and measured latency."""

    arch: Arch
    accuracy: float
    latency_ms: float


def dominates(y: Trained, m: Trained) -> bool:
    """``y`` is strictly better than ``m`` in both objectives (the paper's "yw" of ``m``)."""
    return y.accuracy > m.accuracy and y.latency_ms < m.latency_ms


def latency_lower_bound(candidate: Arch, trained: Iterable[Trained]) -> float:
    """The largest latency of a trained architecture below ``candidate`` (-inf when none)."""
    return max((t.latency_ms for t in trained if precedes(t.arch, candidate)), default=-math.inf)


def prune_reason(candidate: Arch, trained: Sequence[Trained],
                 candidate_latency_ms: float | Callable[[], float] | None = None) -> str | None:
    """Why ``candidate`` need not be trained, or ``None`` to train it.

    ``candidate_latency_ms`` is its measured latency, or a function measuring it (called only when
    a dominated trained architecture above the candidate exists, so measurement stays rare). When
    it is ``None`` the partial-order lower bound is used, which prunes less but never measures.
    """
    pairs = [(m, y) for m in trained if precedes(candidate, m.arch) for y in trained if dominates(y, m)]
    if not pairs:
        return None
    if candidate_latency_ms is None:
        lat = latency_lower_bound(candidate, trained)
    elif callable(candidate_latency_ms):
        lat = float(candidate_latency_ms())
    else:
        lat = float(candidate_latency_ms)
    for m, y in pairs:
        if lat > y.latency_ms:
            return (f"{candidate.key} <= {m.arch.key} (acc {m.accuracy:.4f}), and {y.arch.key} is more accurate "
                    f"(acc {y.accuracy:.4f}) and faster ({y.latency_ms:.3f} ms < {lat:.3f} ms)")
    return None


def should_prune(candidate: Arch, trained: Sequence[Trained],
                 candidate_latency_ms: float | Callable[[], float] | None = None) -> bool:
    return prune_reason(candidate, trained, candidate_latency_ms) is not None


def pareto_front(records: Sequence[Mapping[str, Any]], maximize: Sequence[str] = ("accuracy",),
                 minimize: Sequence[str] = ("latency_ms",)) -> list[int]:
    """Indices of the non-dominated records, sorted by the first ``minimize`` key.

    A record dominates another when it is at least as good in every objective and strictly better
    in one. Records missing an objective (or holding NaN) are skipped. Exact duplicates are all kept.
    """
    keys = [(k, 1.0) for k in maximize] + [(k, -1.0) for k in minimize]

    def score(r: Mapping[str, Any]) -> tuple[float, ...] | None:
        try:
            vals = tuple(sign * float(r[k]) for k, sign in keys)
        except (KeyError, TypeError, ValueError):
            return None
        return None if any(math.isnan(v) for v in vals) else vals

    scored = [(i, s) for i, s in ((i, score(r)) for i, r in enumerate(records)) if s is not None]
    front = []
    for i, si in scored:
        dominated = any(all(a >= b for a, b in zip(sj, si)) and any(a > b for a, b in zip(sj, si))
                        for j, sj in scored if j != i)
        if not dominated:
            front.append(i)
    sort_key = minimize[0] if minimize else maximize[0]
    sign = 1.0 if minimize else -1.0
    return sorted(front, key=lambda i: sign * float(records[i][sort_key]))
