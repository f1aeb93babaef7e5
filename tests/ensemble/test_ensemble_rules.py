import numpy as np
import pytest
import torch

from naslung.ensemble.rules import check_weights, combine, decide, fit_weights

# 3 members, 4 crops: probabilities of malignant per member.
P_POS = np.array([[0.9, 0.2, 0.6, 0.4],
                  [0.8, 0.4, 0.3, 0.45],
                  [0.1, 0.3, 0.7, 0.9]])


def as_pairs(p_pos):
    return np.stack([1 - p_pos, p_pos], axis=-1)


def test_mean_rule_known_values():
    out = combine(as_pairs(P_POS), "mean")
    np.testing.assert_allclose(out[:, 1], [0.6, 0.3, 1.6 / 3, 1.75 / 3])
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_vote_rule_is_fraction_of_members_voting_malignant():
    out = combine(as_pairs(P_POS), "vote")
    # crop 0: 2 of 3 vote malignant; crop 1: none; crop 2: 2 of 3; crop 3: 1 of 3
    np.testing.assert_allclose(out[:, 1], [2 / 3, 0, 2 / 3, 1 / 3])
    assert decide(out).tolist() == [1, 0, 1, 0]
    # the vote disagrees with the mean on crop 3? mean 0.583 says malignant, majority says benign
    assert decide(combine(as_pairs(P_POS), "mean")).tolist() == [1, 0, 1, 1]


def test_vote_tie_is_benign_as_in_the_paper():
    p = as_pairs(np.array([[0.9], [0.1]]))
    out = combine(p, "vote")
    assert out[0, 1] == 0.5 and decide(out).tolist() == [0]
    # a member exactly at 0.5 does not vote malignant
    assert combine(as_pairs(np.array([[0.5]])), "vote")[0, 1] == 0.0


def test_weighted_rule_known_values_and_validation():
    out = combine(as_pairs(P_POS), "weighted", [0.5, 0.5, 0.0])
    np.testing.assert_allclose(out[:, 1], [0.85, 0.3, 0.45, 0.425])
    with pytest.raises(ValueError, match="sum to 1"):
        combine(as_pairs(P_POS), "weighted", [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="3 members"):
        check_weights([1.0], 3)
    with pytest.raises(ValueError, match="non-negative"):
        check_weights([1.5, -0.5, 0.0], 3)
    with pytest.raises(ValueError, match="needs weights"):
        combine(as_pairs(P_POS), "weighted")
    with pytest.raises(ValueError, match="unknown combination rule"):
        combine(as_pairs(P_POS), "median")


def test_rules_agree_between_numpy_and_torch():
    for rule, w in (("mean", None), ("vote", None), ("weighted", [0.2, 0.3, 0.5])):
        a = combine(as_pairs(P_POS), rule, w)
        b = combine(torch.tensor(as_pairs(P_POS)), rule, w)
        assert isinstance(b, torch.Tensor)
        np.testing.assert_allclose(a, b.numpy(), atol=1e-12)


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(M, N, 2\)"):
        combine(np.zeros((3, 4)), "mean")


def test_fit_weights_prefers_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.where(y == 1, 0.85, 0.15) + rng.normal(0, 0.05, 200)
    noise = rng.uniform(0, 1, (2, 200))
    w = fit_weights(np.clip(np.vstack([noise[0], good, noise[1]]), 0, 1), y)
    assert w.shape == (3,) and abs(w.sum() - 1) < 1e-9 and (w >= 0).all()
    assert w[1] > 0.8, w


def test_fit_weights_symmetric_members_get_equal_weight():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    p = np.where(y == 1, 0.7, 0.3)
    w = fit_weights(np.vstack([p, p]), y)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-9)
    assert fit_weights(p[None], y).tolist() == [1.0]
    with pytest.raises(ValueError, match="labels"):
        fit_weights(np.vstack([p, p]), np.full(50, 2))
