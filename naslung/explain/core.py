"""Explain one crop: run the prediction, then every requested method on every model, then combine.

A *predictor* is either one model (an ``nn.Module`` with ``predict_proba``) or an ensemble from
:mod:`naslung.ensemble`. Ensemble members are explained one by one and their maps averaged with the
weights the ensemble uses for its prediction, so the picture matches the number it explains.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from naslung.data.spec import CropSpec
from naslung.explain.attribution import METHODS, AttributionMap, combine, normalise
from naslung.explain import methods as M

log = logging.getLogger(__name__)

CLASS_NAMES = ("benign", "malignant")


@dataclass
class Member:
    name: str
    model: nn.Module
    weight: float


@dataclass
class Explanation:
    """A prediction and the maps that explain it (combined over members for an ensemble)."""

    proba: np.ndarray  # (2,) the predictor's own probabilities
    target: int  # the class the maps explain
    maps: list[AttributionMap]
    member_proba: dict[str, list[float]] = field(default_factory=dict)
    member_maps: list[AttributionMap] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    member_weights: dict[str, float] = field(default_factory=dict)  # as used to combine the maps

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.proba))

    @property
    def predicted_name(self) -> str:
        return CLASS_NAMES[self.predicted] if self.predicted < len(CLASS_NAMES) else str(self.predicted)

    def summary(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "predicted_name": self.predicted_name,
                "proba": [float(p) for p in self.proba], "p_malignant": float(self.proba[1]),
                "target": self.target, "target_name": CLASS_NAMES[self.target],
                "member_proba": self.member_proba, "member_weights": self.member_weights,
                "timings_s": self.timings_s,
                "maps": [m.summary() for m in self.maps]}


def members_of(predictor: Any) -> list[Member]:
    """The models behind a predictor and their weights in its prediction.

    Accepts a single ``nn.Module``; an ensemble exposing ``members()`` / ``members`` as modules or
    (name, module, weight) records; or a list of modules.
    """
    if isinstance(predictor, nn.Module) and not hasattr(predictor, "member_proba"):
        return [Member("model", predictor, 1.0)]
    if isinstance(predictor, (list, tuple)):
        return [Member(f"m{i}", m, 1.0) for i, m in enumerate(predictor)]
    raw = getattr(predictor, "members", None)
    if callable(raw):
        raw = raw()
    if raw is None:
        raw = getattr(predictor, "models", None)
    if raw is None:
        raise TypeError(f"cannot find the member models of {type(predictor).__name__}")
    names = list(getattr(predictor, "member_names", []) or [])
    weights = getattr(predictor, "weights", None)
    if callable(weights):
        weights = weights()
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, nn.Module):
            name = names[i] if i < len(names) else f"m{i}"
            w = float(weights[i]) if weights is not None else 1.0
            out.append(Member(name, m, w))
        else:  # a record with name/model/weight attributes
            model = getattr(m, "model", None) or getattr(m, "module", None)
            if not isinstance(model, nn.Module):
                raise TypeError(f"ensemble member {i} of {type(predictor).__name__} has no nn.Module")
            name = getattr(m, "name", None) or (names[i] if i < len(names) else f"m{i}")
            w = getattr(m, "weight", None)
            if w is None:
                w = float(weights[i]) if weights is not None else 1.0
            out.append(Member(str(name), model, float(w)))
    if not out:
        raise ValueError(f"{type(predictor).__name__} has no members to explain")
    return out


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_methods(methods: Sequence[str]) -> list[str]:
    out = []
    for m in methods:
        m = m.strip().lower()
        if m not in METHODS:
            raise ValueError(f"unknown explanation method {m!r}; choose from {', '.join(METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("no explanation method given")
    return out


def _member_maps(model: nn.Module, x: torch.Tensor, target: int, methods: list[str], name: str,
                 options: dict[str, Any], timings: dict[str, float]) -> list[AttributionMap]:
    raws: list[M.RawMap] = []
    for method in methods:
        t0 = time.perf_counter()
        if method == "cbam":
            found = M.cbam_maps(model, x)
            if not found:
                log.warning("%s has no CBAM spatial gates (cbam='none'?); no attention maps", name)
            raws.extend(found)
        elif method == "gradcam":
            raws.append(M.gradcam_map(model, x, target, options.get("gradcam_layer")))
        elif method == "ig":
            raws.append(M.ig_map(model, x, target, n_steps=int(options.get("ig_steps", 32))))
        elif method == "occlusion":
            raws.append(M.occlusion_map(model, x, target, window=options.get("occlusion_window"),
                                        stride=options.get("occlusion_stride")))
        timings[method] = timings.get(method, 0.0) + time.perf_counter() - t0
    out = []
    for r in raws:
        values, lo, hi = normalise(r.values, r.sign, r.clip_percentile)
        info = {k: v for k, v in r.info.items()}
        info["scaling"] = r.sign if r.clip_percentile is None else f"{r.sign}, clipped at p{r.clip_percentile:g}"
        out.append(AttributionMap(r.method, r.layer, values, target, name, lo, hi, info))
    return out


def explain(predictor: Any, crop_hu: np.ndarray, spec: CropSpec,
            methods: Sequence[str] = ("cbam", "gradcam", "ig", "occlusion"), *,
            target: int | None = None, **options: Any) -> Explanation:
    """Predict ``crop_hu`` (S, S, S) HU and explain it with ``methods``.

    ``target`` is the class to explain (default: the predicted one). ``options``: ``ig_steps``,
    ``occlusion_window``, ``occlusion_stride``, ``gradcam_layer`` (module name, default last stage).
    """
    methods = _check_methods(methods)
    crop = np.asarray(crop_hu)
    if crop.shape != spec.shape:
        raise ValueError(f"crop has shape {crop.shape}, the crop spec expects {spec.shape}")
    members = members_of(predictor)
    device = _device_of(members[0].model)
    x = torch.from_numpy(spec.normalize(crop))[None, None].to(device)
    for mb in members:
        mb.model.eval()
    with torch.no_grad():
        proba = predictor.predict_proba(x)
        proba = proba.detach().float().cpu().numpy()[0]
        member_proba: dict[str, list[float]] = {}
        if len(members) > 1 or hasattr(predictor, "member_proba"):
            if hasattr(predictor, "member_proba"):
                mp = predictor.member_proba(x).detach().float().cpu().numpy()[:, 0]
            else:
                mp = np.stack([mb.model.predict_proba(x).float().cpu().numpy()[0] for mb in members])
            member_proba = {mb.name: [float(v) for v in p] for mb, p in zip(members, mp)}
    if target is None:
        target = int(np.argmax(proba))
    if target not in (0, 1):
        raise ValueError(f"target class must be 0 (benign) or 1 (malignant), got {target}")
    timings: dict[str, float] = {}
    per_member = [_member_maps(mb.model, x, target, methods, mb.name, options, timings) for mb in members]
    if len(members) == 1:
        maps = per_member[0]
        for m in maps:
            m.member = None
        member_maps: list[AttributionMap] = []
    else:
        maps = _combine_members(per_member, [mb.weight for mb in members])
        member_maps = [m for ms in per_member for m in ms]
    log.info("explained class %d with %d maps in %s", target, len(maps),
             {k: round(v, 2) for k, v in timings.items()})
    total = sum(mb.weight for mb in members)
    weights = {mb.name: mb.weight / total for mb in members} if len(members) > 1 else {}
    return Explanation(proba, target, maps, member_proba, member_maps,
                       {k: round(v, 3) for k, v in timings.items()}, weights)


def _combine_members(per_member: list[list[AttributionMap]], weights: list[float]) -> list[AttributionMap]:
    """Combine maps that share (method, layer) across members; a map some members lack (a CBAM stage
    of a member without CBAM) is combined over the members that have it, with their weights."""
    order: list[tuple[str, str]] = []
    for ms in per_member:
        for m in ms:
            if (m.method, m.layer if m.method == "cbam" else "*") not in order:
                order.append((m.method, m.layer if m.method == "cbam" else "*"))
    out = []
    for method, layer in order:
        picked, w = [], []
        for ms, wi in zip(per_member, weights):
            for m in ms:
                if m.method == method and (layer == "*" or m.layer == layer):
                    picked.append(m)
                    w.append(wi)
        if layer == "*":  # Grad-CAM layers differ by member architecture; name them all
            names = sorted({m.layer for m in picked})
            for m in picked:
                m.info.setdefault("member_layer", m.layer)
            combined_layer = names[0] if len(names) == 1 else "+".join(names)
            picked = [AttributionMap(m.method, combined_layer, m.values, m.target, m.member, m.raw_min,
                                     m.raw_max, m.info) for m in picked]
        out.append(combine(picked, w))
    return out


def explain_crop(predictor: Any, crop_hu: np.ndarray, spec: CropSpec,
                 methods: Sequence[str] = ("cbam", "gradcam", "ig", "occlusion")) -> list[AttributionMap]:
    """The agreed interface: just the (combined) maps for the predicted class."""
    return explain(predictor, crop_hu, spec, methods).maps
