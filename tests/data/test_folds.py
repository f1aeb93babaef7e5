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


def test_inner_splits_rotate_validation_over_development_folds_and_never_touch_the_test_fold():
    from naslung.data.folds import inner_splits

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    folds = assign_folds(labels, np.arange(200), k=5, seed=1)
    splits = inner_splits(folds, 2, 3)
    assert [s.fold for s in splits] == [3, 4, 0]
    outer = split_fold(folds, 2)
    assert np.array_equal(splits[0].train, outer.train) and np.array_equal(splits[0].val, outer.val)
    test = set(np.flatnonzero(folds == 2).tolist())
    for s in splits:
        assert len(s.test) == 0
        assert not test & set(s.train.tolist()) and not test & set(s.val.tolist())
        assert set(s.val.tolist()) == set(np.flatnonzero(folds == s.fold).tolist())
        assert not set(s.train.tolist()) & set(s.val.tolist())
        assert len(s.train) + len(s.val) + len(test) == 200
    full = inner_splits(folds, 2, 4)  # every development fold validated once
    assert sorted(i for s in full for i in s.val.tolist()) == sorted(set(range(200)) - test)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="between 1 and 4"):
            inner_splits(folds, 2, bad)
