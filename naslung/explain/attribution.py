"""The attribution-map record every explanation method returns, and how maps are normalised.

A map is always a float32 cube on the crop grid (axis order z, y, x) scaled to [0, 1], so the
figure, the HTML viewer and the NIfTI export never need to know which method produced it. The raw
value range before scaling is kept, because "the attention map spans 0.48-0.52" and "it spans
0.0-1.0" look the same after normalisation and a reader may want to know which it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

METHODS = ("cbam", "gradcam", "ig", "occlusion")

# How a method's signed raw output becomes a non-negative map before scaling:
# "minmax"   - shift the minimum to 0 (CBAM sigmoid maps: every value is a weight, none is "no evidence")
# "positive" - keep evidence *for* the target class, zero below (Grad-CAM's ReLU, IG, occlusion)
# "abs"      - magnitude regardless of direction
SIGN_MODES = ("minmax", "positive", "abs")


@dataclass
class AttributionMap:
    """One explanation map on the crop grid.

    ``values`` is float32 (S, S, S) in [0, 1], axis order (z, y, x) like the crop. ``layer`` names
    the module the map was read from (or "input" for input attributions). ``member`` is the ensemble
    member it came from, or None for a map combined over members.
    """

    method: str
    layer: str
    values: np.ndarray
    target: int = 1
    member: str | None = None
    raw_min: float = 0.0
    raw_max: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A file- and HTML-safe id such as ``gradcam`` or ``cbam_stage2``."""
        # CBAM gives one map per stage, so its key names the stage; the others give one map each.
        base = f"{self.method}_{self.layer}" if self.method == "cbam" and self.layer else self.method
        if self.member is not None:
            base = f"{base}_{self.member}"
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in base)

    @property
    def label(self) -> str:
        """A short human title, e.g. ``Grad-CAM (stages.2)``."""
        names = {"cbam": "CBAM attention", "gradcam": "Grad-CAM", "ig": "Integrated Gradients",
                 "occlusion": "Occlusion"}
        return f"{names.get(self.method, self.method)} ({self.layer})"

    def summary(self) -> dict[str, Any]:
        """JSON-ready description without the voxel values."""
        return {"key": self.key, "method": self.method, "layer": self.layer, "target": self.target,
                "member": self.member, "raw_min": self.raw_min, "raw_max": self.raw_max,
                "shape": list(self.values.shape), **self.info}


def normalise(raw: np.ndarray, sign: str = "positive", clip_percentile: float | None = None
              ) -> tuple[np.ndarray, float, float]:
    """Scale a raw map to float32 [0, 1]; returns (values, raw_min, raw_max).

    ``clip_percentile`` (e.g. 99.5) saturates the top of voxel-level maps at that percentile of
    the non-zero values, so a handful of extreme voxels do not make the rest invisible.
    A map that is constant (or, for "positive", has no positive evidence) becomes all zeros rather
    than NaN: "nothing to show" is an honest answer.
    """
    if sign not in SIGN_MODES:
        raise ValueError(f"sign must be one of {SIGN_MODES}, got {sign!r}")
    x = np.nan_to_num(np.asarray(raw, dtype=np.float64))
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if sign == "minmax":
        x = x - lo
    elif sign == "positive":
        x = np.clip(x, 0.0, None)
    else:
        x = np.abs(x)
    top = float(x.max()) if x.size else 0.0
    if clip_percentile is not None and top > 0:
        top = float(np.percentile(x[x > 0], clip_percentile))
    out = np.clip(x / top, 0.0, 1.0) if top > 0 else np.zeros_like(x)
    return out.astype(np.float32), lo, hi


def combine(maps: Sequence[AttributionMap], weights: Sequence[float]) -> AttributionMap:
    """Weighted mean of members' normalised maps (the ensemble's own weights), rescaled to [0, 1].

    All maps must share method, layer label, target and shape; the result has ``member=None``.
    """
    if not maps:
        raise ValueError("no maps to combine")
    if len(maps) != len(weights):
        raise ValueError(f"{len(maps)} maps but {len(weights)} weights")
    first = maps[0]
    for m in maps[1:]:
        if (m.method, m.layer, m.values.shape) != (first.method, first.layer, first.values.shape):
            raise ValueError(f"cannot combine {m.method}/{m.layer}{m.values.shape} with "
                             f"{first.method}/{first.layer}{first.values.shape}")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {list(w)}")
    w = w / w.sum()
    acc = sum(wi * m.values.astype(np.float64) for wi, m in zip(w, maps))
    values, _, _ = normalise(acc, "positive")
    members = [m.member for m in maps]
    info = {"combined_from": members, "weights": [float(x) for x in w]}
    info.update({k: v for k, v in first.info.items() if k not in info and k != "module"})
    return AttributionMap(first.method, first.layer, values, first.target, None,
                          float(min(m.raw_min for m in maps)), float(max(m.raw_max for m in maps)), info)
