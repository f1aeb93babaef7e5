import math

import numpy as np
import pytest

from naslung.train.metrics import binary_metrics, confusion, json_safe, summarize


def _known():
    # 10 malignant: 7 at p=0.9 (TP), 3 at p=0.2 (FN); 10 benign: 8 at p=0.1 (TN), 2 at p=0.6 (FP)
    y = np.array([1] * 10 + [0] * 10)
    p = np.array([0.9] * 7 + [0.2] * 3 + [0.1] * 8 + [0.6] * 2)
    return y, p


def test_metrics_on_a_known_confusion_matrix():
    y, p = _known()
    m = binary_metrics(y, p)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (7, 3, 8, 2)
    assert m["accuracy"] == pytest.approx(15 / 20)
    assert m["sensitivity"] == pytest.approx(0.7)
    assert m["specificity"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(2 * 7 / (2 * 7 + 2 + 3))
    # AUC = P(score of a malignant > score of a benign): (7*10 + 3*8) / 100
    assert m["auc"] == pytest.approx(0.94)
    assert m["n"] == 20
    assert confusion(y, p) == [[8, 2], [3, 7]]


def test_threshold_moves_predictions():
    y, p = _known()
    m = binary_metrics(y, p, threshold=0.7)
    assert (m["tp"], m["fp"]) == (7, 0)


def test_single_class_gives_nan_auc_not_an_error():
    m = binary_metrics([1, 1, 1], [0.8, 0.4, 0.9])
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(2 / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        binary_metrics([0, 1], [0.3])


def test_summarize_mean_and_sample_std_ignore_nan():
    rows = [{"accuracy": 0.8, "auc": 0.9}, {"accuracy": 0.6, "auc": math.nan}, {"accuracy": 0.7, "auc": 0.7}]
    s = summarize(rows, keys=("accuracy", "auc"))
    assert s["mean"]["accuracy"] == pytest.approx(0.7)
    assert s["std"]["accuracy"] == pytest.approx(0.1)
    assert s["mean"]["auc"] == pytest.approx(0.8)


def test_json_safe_replaces_nan():
    assert json_safe({"a": [math.nan, np.float32(1.5)], "b": float("inf")}) == {"a": [None, 1.5], "b": None}


def test_a_tie_is_benign_in_metrics_and_in_the_ensemble_rule():
    import numpy as np

    from naslung.ensemble.rules import decide
    from naslung.train.metrics import binary_metrics

    p = np.array([0.5, 0.5, 0.9, 0.1])
    m = binary_metrics([0, 1, 1, 0], p)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 1, 2, 0)
    assert decide(np.stack([1 - p, p], 1)).tolist() == [0, 0, 1, 0]
