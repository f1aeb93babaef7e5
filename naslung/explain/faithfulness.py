"""Checks that the maps explain the model rather than the image.

* Model randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018): the maps of
  a trained model must differ from the maps of the same network with re-initialised weights. A
  method whose map barely changes is showing image structure (an edge detector), not the model.
  Measured with Spearman rank correlation over voxels.
* Planted evidence: on a toy set whose label depends only on a small known region (a bright cube in
  one corner; a label-independent faint blob elsewhere as a distractor), a model trained on it must
  put most of its attribution mass inside that region.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps over all voxels (ties get average ranks)."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, dtype=np.float64).ravel())
    rb = rankdata(np.asarray(b, dtype=np.float64).ravel())
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def mass_fraction(values: np.ndarray, region: np.ndarray) -> float:
    """Share of a non-negative map's total mass inside a boolean region (0 for an empty map)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    total = v.sum()
    return float(v[np.asarray(region, dtype=bool)].sum() / total) if total > 0 else 0.0


def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every layer re-initialised (full randomisation, eval mode).

    Layers with ``reset_parameters`` use their own initialiser (BatchNorm also forgets its running
    statistics); any other parameter (e.g. a cosine head's class weights) is redrawn Kaiming-uniform.
    """
    clone = copy.deepcopy(model)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        handled: set[int] = set()
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
                handled.update(id(p) for p in m.parameters(recurse=False))
        for p in clone.parameters():
            if id(p) not in handled:
                with torch.no_grad():
                    if p.ndim >= 2:
                        nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                    else:
                        nn.init.uniform_(p, -0.1, 0.1)
    finally:
        torch.random.set_rng_state(state)
    return clone.eval()


@dataclass
class PlantedSet:
    """Toy crops (HU, (N, S, S, S) int16), labels, and the region the label depends on."""

    crops: np.ndarray
    labels: np.ndarray
    region: np.ndarray  # bool (S, S, S)


def make_planted_set(n: int = 192, size: int = 16, cube: int = 4, box: int = 6, seed: int = 0) -> PlantedSet:
    """Malignant (1) crops hold a bright cube somewhere inside a ``box``-voxel corner region; benign
    (0) ones have nothing there. Every crop, whatever its label, also holds a faint blob of random
    size placed away from the corner and lung-like noise, so "any structure" or "total brightness"
    does not give the label away -- only the corner does."""
    if not cube < box < size // 2:
        raise ValueError(f"need cube < box < size/2, got cube={cube}, box={box}, size={size}")
    rng = np.random.default_rng(seed)
    lo = 1  # one voxel from the crop's faces, inside the network's padding reach
    region = np.zeros((size,) * 3, dtype=bool)
    region[lo:lo + box, lo:lo + box, lo:lo + box] = True
    zz, yy, xx = np.mgrid[:size, :size, :size]
    labels = np.arange(n) % 2
    crops = np.empty((n, size, size, size), dtype=np.int16)
    for i, y in enumerate(labels):
        hu = rng.normal(-820, 40, (size,) * 3)
        # distractor: a faint blob centred in the far half of the crop
        r = rng.uniform(1.8, 3.2)
        c = rng.uniform(size / 2 + 0.5, size - 1 - r, 3)
        blob = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r
        hu[blob] = rng.normal(-350, 30, int(blob.sum()))
        if y:
            o = lo + rng.integers(0, box - cube + 1, 3)
            hu[o[0]:o[0] + cube, o[1]:o[1] + cube, o[2]:o[2] + cube] = rng.normal(60, 30, (cube,) * 3)
        crops[i] = np.clip(hu, -1024, 3000).astype(np.int16)
    return PlantedSet(crops, labels.astype(np.int64), region)


def evaluate(model: nn.Module, crops: np.ndarray, regions: np.ndarray | None, spec, *,
             methods=("cbam", "gradcam", "ig", "occlusion"), target: int | None = None, seed: int = 1,
             **options) -> dict[str, dict[str, float]]:
    """Faithfulness figures of ``model`` on HU crops (N, S, S, S).

    Per map key: mean / max Spearman between the trained model's map and the map of a randomised
    copy (lower = the map depends more on the learned weights), and, when ``regions`` (N, S, S, S)
    bool is given, the mean share of attribution mass inside the region next to the region's share
    of the volume (chance). ``target`` None explains each crop's predicted class.
    """
    from naslung.explain.core import explain

    rnd = randomize_weights(model, seed=seed)
    rho: dict[str, list[float]] = {}
    mass: dict[str, list[float]] = {}
    chance: list[float] = []
    for i, crop in enumerate(crops):
        a = explain(model, crop, spec, methods, target=target, **options)
        b = explain(rnd, crop, spec, methods, target=a.target, **options)
        for ma, mb in zip(a.maps, b.maps):
            rho.setdefault(ma.key, []).append(spearman(ma.values, mb.values))
            if regions is not None:
                mass.setdefault(ma.key, []).append(mass_fraction(ma.values, regions[i]))
        if regions is not None:
            chance.append(float(np.asarray(regions[i], dtype=bool).mean()))
    out: dict[str, dict[str, float]] = {}
    for k in rho:
        out[k] = {"spearman_vs_random": float(np.mean(rho[k])), "spearman_max": float(np.max(rho[k])),
                  "n": len(rho[k])}
        if k in mass:
            out[k]["region_mass"] = float(np.mean(mass[k]))
    if chance:
        out["_chance"] = {"region_mass": float(np.mean(chance)), "n": len(chance)}
    return out
