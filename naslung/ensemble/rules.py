"""Combination rules: how K members' probabilities become one (N, 2) answer.

Pure functions on arrays of member probabilities shaped (M, N, 2) -- numpy arrays or torch tensors,
the result has the input's type. ``mean`` averages probabilities; ``vote`` is NAS-Lung's majority
vote (each member votes for its argmax class; the output is the fraction of votes, so a 3-of-5
vote for malignant gives 0.6); ``weighted`` averages with non-negative weights summing to one,
fitted on validation predictions by :func:`fit_weights`.

Ties in ``vote`` (even M, half the votes) give exactly 0.5; :func:`decide` maps 0.5 to benign, the
paper's rule (malignant only with strictly more votes). Prefer odd K for voting.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

RULES = ("mean", "vote", "weighted")

Array = TypeVar("Array")


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch")


def _check(member_proba: Array) -> None:
    shape = tuple(member_proba.shape)
    if len(shape) != 3 or shape[2] != 2 or shape[0] < 1:
        raise ValueError(f"member probabilities must have shape (M, N, 2) with M >= 1, got {shape}")


def check_weights(weights: Sequence[float], n_members: int) -> np.ndarray:
    """Weights as float64, validated: one per member, non-negative, summing to one (within 1e-6)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n_members:
        raise ValueError(f"{w.shape[0]} weights for {n_members} members")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got sum {w.sum():.6g}")
    return w


def mean_rule(member_proba: Array) -> Array:
    """Average of the members' probabilities."""
    _check(member_proba)
    return member_proba.mean(0) if _is_torch(member_proba) else np.mean(member_proba, axis=0)


def weighted_rule(member_proba: Array, weights: Sequence[float]) -> Array:
    """Weighted average of probabilities; ``weights`` as from :func:`fit_weights`."""
    _check(member_proba)
    w = check_weights(weights, member_proba.shape[0])
    if _is_torch(member_proba):
        import torch

        wt = torch.as_tensor(w, dtype=member_proba.dtype, device=member_proba.device)
        return torch.einsum("m,mnc->nc", wt, member_proba)
    return np.einsum("m,mnc->nc", w.astype(member_proba.dtype), member_proba)


def vote_rule(member_proba: Array) -> Array:
    """Majority vote: fraction of members whose argmax is each class (ties inside a member -> benign)."""
    _check(member_proba)
    if _is_torch(member_proba):
        votes_pos = (member_proba[..., 1] > member_proba[..., 0]).to(member_proba.dtype).mean(0)
        import torch

        return torch.stack([1 - votes_pos, votes_pos], dim=1)
    votes_pos = (member_proba[..., 1] > member_proba[..., 0]).astype(member_proba.dtype).mean(0)
    return np.stack([1 - votes_pos, votes_pos], axis=1)


def combine(member_proba: Array, rule: str = "mean", weights: Sequence[float] | None = None) -> Array:
    """Apply ``rule`` (one of :data:`RULES`) to (M, N, 2) member probabilities -> (N, 2)."""
    if rule == "mean":
        return mean_rule(member_proba)
    if rule == "vote":
        return vote_rule(member_proba)
    if rule == "weighted":
        if weights is None:
            raise ValueError("the 'weighted' rule needs weights (fit them with fit_weights)")
        return weighted_rule(member_proba, weights)
    raise ValueError(f"unknown combination rule {rule!r}; choose one of {RULES}")


def decide(proba: Array) -> Array:
    """Class per row: malignant (1) only when its probability is strictly above 0.5."""
    if _is_torch(proba):
        return (proba[:, 1] > 0.5).long()
    return (np.asarray(proba)[:, 1] > 0.5).astype(np.int64)


def fit_weights(member_proba_pos: np.ndarray, y: np.ndarray, *, steps: int = 500, lr: float = 0.5,
                shrink: float = 1e-3) -> np.ndarray:
    """Simplex weights minimising the validation log-loss of the weighted mean probability.

    ``member_proba_pos`` is (M, N) malignant probabilities on the validation set, ``y`` the labels.
    Exponentiated-gradient descent from uniform weights: deterministic, no extra dependencies, and
    the weights stay non-negative and sum to one. ``shrink`` pulls gently towards uniform so that
    members that tie on a tiny validation set share weight instead of one winning by noise.
    """
    p = np.asarray(member_proba_pos, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or p.shape[1] != y.shape[0]:
        raise ValueError(f"need (M, N) probabilities and N labels, got {p.shape} and {y.shape}")
    if p.shape[1] == 0:
        raise ValueError("cannot fit weights on an empty validation set")
    m = p.shape[0]
    if m == 1:
        return np.ones(1)
    if not set(np.unique(y)).issubset({0.0, 1.0}):
        raise ValueError("labels must be 0 or 1")
    eps = 1e-6
    p = np.clip(p, eps, 1 - eps)
    w = np.full(m, 1.0 / m)
    for _ in range(steps):
        q = np.clip(w @ p, eps, 1 - eps)
        # d/dw of mean binary cross-entropy + shrink * ||w - 1/m||^2
        g = -(p * (y / q - (1 - y) / (1 - q))).mean(axis=1) + 2 * shrink * (w - 1.0 / m)
        w = w * np.exp(-lr * (g - g.min()))
        w /= w.sum()
    return w
