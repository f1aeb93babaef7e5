"""Patient-grouped, stratified folds, and the train / validation / test split of each fold.

Model selection never sees the test fold: for outer fold ``f`` the inner validation set is the
next fold ``(f + 1) % k``, which is patient-disjoint from both the test fold and the training folds
and stratified like every other fold. (NAS-Lung chose checkpoints on its test fold; we do not.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


@dataclass(frozen=True)
class FoldSplit:
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int = 10, seed: int = 0,
                 tries: int = 16) -> np.ndarray:
    """Fold id per sample: patients never straddle folds, class ratios kept as far as groups allow.

    ``StratifiedGroupKFold`` can leave one fold twice the size of another when patients carry
    several nodules; of ``tries`` shuffles (derived from ``seed``) we keep the one whose fold sizes
    and malignant fractions spread least, so the result is still deterministic per seed.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if k < 3:
        raise ValueError(f"need at least 3 folds (train / validation / test), got {k}")
    if n_groups < k:
        raise ValueError(f"{n_groups} patients cannot fill {k} patient-grouped folds")
    best, best_cost = None, np.inf
    for t in range(max(1, tries)):
        folds = np.full(len(labels), -1, dtype=np.int64)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed * 1000 + t)
        for f, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[test_idx] = f
        sizes = np.bincount(folds, minlength=k)
        rates = np.array([labels[folds == f].mean() if sizes[f] else 0.0 for f in range(k)])
        cost = (sizes.max() - sizes.min()) / max(1.0, sizes.mean()) + (rates.max() - rates.min())
        if cost < best_cost:
            best, best_cost = folds, cost
    return best


def assign_folds_from_column(values: np.ndarray) -> np.ndarray:
    """Folds given by the data (e.g. LUNA16 subsets ``subset0..subset9``), renumbered 0..k-1."""
    uniq = sorted(set(values.tolist()))
    lookup = {v: i for i, v in enumerate(uniq)}
    return np.array([lookup[v] for v in values.tolist()], dtype=np.int64)


def split_fold(folds: np.ndarray, fold: int) -> FoldSplit:
    """Train / validation / test indices for outer fold ``fold`` (validation = next fold)."""
    folds = np.asarray(folds)
    k = int(folds.max()) + 1
    if folds.min() < 0:
        raise ValueError("some samples have no fold; assign folds first (naslung prepare --folds K)")
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range 0..{k - 1}")
    val_fold = (fold + 1) % k
    idx = np.arange(len(folds))
    return FoldSplit(
        fold=fold,
        train=idx[(folds != fold) & (folds != val_fold)],
        val=idx[folds == val_fold],
        test=idx[folds == fold],
    )


def inner_splits(folds: np.ndarray, fold: int, n_inner: int) -> list[FoldSplit]:
    """``n_inner`` train / validation splits of outer fold ``fold``'s development folds; never its test fold.

    The development folds are every fold but ``fold``, taken in the order ``fold + 1, fold + 2, ...``
    (mod k). Inner split ``i`` validates on the ``i``-th of them and trains on the others, so inner
    split 0 is exactly :func:`split_fold`'s train / validation split and ``n_inner = k - 1`` is a full
    cross-validation of the development patients. Each split's ``fold`` is its validation fold and
    its ``test`` is empty: a search objective built on these splits cannot see the outer test fold.

    Raises:
        ValueError: ``n_inner`` is not in ``1 .. k - 1`` or ``fold`` is out of range.
    """
    folds = np.asarray(folds)
    outer = split_fold(folds, fold)  # validates fold and the fold assignment
    k = int(folds.max()) + 1
    if not 1 <= int(n_inner) <= k - 1:
        raise ValueError(f"inner folds must be between 1 and {k - 1} (the development folds of a {k}-fold "
                         f"dataset), got {n_inner}")
    dev = [(fold + j) % k for j in range(1, k)]
    idx = np.arange(len(folds))
    empty = np.array([], dtype=np.int64)
    splits = []
    for val_fold in dev[:int(n_inner)]:
        splits.append(FoldSplit(fold=val_fold, train=idx[(folds != fold) & (folds != val_fold)],
                                val=idx[folds == val_fold], test=empty))
    assert np.array_equal(splits[0].train, outer.train) and np.array_equal(splits[0].val, outer.val)
    return splits
