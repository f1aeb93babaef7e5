import numpy as np
import pytest

from naslung.data.folds import assign_folds, split_fold


def test_folds_are_patient_grouped_and_stratified():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, 60))
    labels = (rng.random(len(groups)) < 0.4).astype(int)
    folds = assign_folds(labels, groups, k=5, seed=3)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1, "a patient straddles folds"
    rates = [labels[folds == f].mean() for f in range(5)]
    assert max(rates) - min(rates) < 0.25


def test_split_never_lets_validation_touch_test():
    groups = np.arange(40) // 2
    labels = np.arange(40) % 2
    folds = assign_folds(labels, groups, k=4)
    for f in range(4):
        s = split_fold(folds, f)
        assert set(s.train).isdisjoint(s.val) and set(s.train).isdisjoint(s.test)
        assert set(s.val).isdisjoint(s.test)
        assert len(s.train) + len(s.val) + len(s.test) == 40
        assert set(groups[s.val]).isdisjoint(groups[s.test])


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match="patients"):
        assign_folds(np.array([0, 1, 0]), np.array(["a", "a", "b"]), k=3)
