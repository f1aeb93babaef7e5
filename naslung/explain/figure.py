"""PNG figures a radiologist can read at a glance.

One figure per map: axial, coronal and sagittal planes through the crop centre (the nodule), and an
axial strip through the crop below them; CT in a lung window (W1500 / L-600), the map as a translucent
overlay with a colour bar, the prediction and probability in the title. Planes are drawn in the
radiological convention for an LPS crop (axis order z, y, x): patient right on the image left,
anterior / superior at the top, with the orientation letters written on each panel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from naslung.explain.attribution import AttributionMap

LUNG_WINDOW = (1500.0, -600.0)  # width, level in HU
CMAP = "jet"
THRESHOLD = 0.15  # map values below this fade out, so unexplained tissue stays readable


def window_ct(hu: np.ndarray, width: float = LUNG_WINDOW[0], level: float = LUNG_WINDOW[1]) -> np.ndarray:
    """HU -> float [0, 1] grey values in a (width, level) window."""
    lo = level - width / 2
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)


def overlay_alpha(values: np.ndarray, opacity: float) -> np.ndarray:
    """Per-pixel alpha: full ``opacity`` above THRESHOLD, fading linearly to 0 below it."""
    return opacity * np.clip(values / THRESHOLD, 0.0, 1.0)


# plane -> (function (volume, index) -> 2D image in display orientation, orientation letters
#           (top, bottom, left, right), axis of the volume the index runs along)
def _axial(v: np.ndarray, i: int) -> np.ndarray:
    return v[i]  # rows y (anterior at top), columns x (patient right on the left for LPS)


def _coronal(v: np.ndarray, i: int) -> np.ndarray:
    return v[::-1, i, :]  # rows z flipped so superior is on top


def _sagittal(v: np.ndarray, i: int) -> np.ndarray:
    return v[::-1, :, i]  # rows z flipped, columns y (anterior on the left)


PLANES = {
    "axial": (_axial, ("A", "P", "R", "L"), 0),
    "coronal": (_coronal, ("S", "I", "R", "L"), 1),
    "sagittal": (_sagittal, ("S", "I", "A", "P"), 2),
}


def title_text(summary: dict[str, Any], amap: AttributionMap | None = None) -> str:
    name = summary.get("predicted_name", "?")
    p = summary.get("p_malignant")
    head = f"Prediction: {name}" + (f"   P(malignant) = {p:.3f}" if p is not None else "")
    if amap is None:
        return head
    if amap.method == "cbam":  # the network's own attention: computed before the head, the same for every class
        return f"{head}\n{amap.label}: where the network attends (independent of the class)"
    target = summary.get("target_name", str(amap.target))
    return f"{head}\n{amap.label}: evidence for '{target}'"


def _panel(ax, ct2d: np.ndarray, map2d: np.ndarray | None, letters, opacity: float, title: str,
           extent_mm: float) -> Any:
    ext = (0, extent_mm, 0, extent_mm)
    ax.imshow(ct2d, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=ext)
    im = None
    if map2d is not None:
        im = ax.imshow(map2d, cmap=CMAP, vmin=0, vmax=1, interpolation="bilinear", extent=ext,
                       alpha=overlay_alpha(map2d, opacity))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    top, bottom, left, right = letters
    kw = dict(color="yellow", fontsize=9, fontweight="bold", ha="center", va="center")
    ax.text(0.5, 0.96, top, transform=ax.transAxes, **kw)
    ax.text(0.5, 0.04, bottom, transform=ax.transAxes, **kw)
    ax.text(0.04, 0.5, left, transform=ax.transAxes, **kw)
    ax.text(0.96, 0.5, right, transform=ax.transAxes, **kw)
    return im


def render_map_png(crop_hu: np.ndarray, amap: AttributionMap | None, summary: dict[str, Any],
                   path: str | Path, *, spacing_mm: float = 1.0, opacity: float = 0.45,
                   strip: int = 10, center: Sequence[int] | None = None, dpi: int = 110) -> Path:
    """Write the three-plane + axial-strip figure for one map (or the bare CT when ``amap`` is None)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    crop_hu = np.asarray(crop_hu)
    if crop_hu.ndim != 3 or len(set(crop_hu.shape)) != 1:
        raise ValueError(f"expected a cubic crop (S, S, S), got {crop_hu.shape}")
    if amap is not None and amap.values.shape != crop_hu.shape:
        raise ValueError(f"map {amap.key} has shape {amap.values.shape}, crop {crop_hu.shape}")
    s = crop_hu.shape[0]
    c = [s // 2] * 3 if center is None else [int(v) for v in center]
    ct = window_ct(crop_hu)
    mv = None if amap is None else amap.values
    extent = s * spacing_mm

    fig = plt.figure(figsize=(10, 5.4), dpi=dpi)
    gs = fig.add_gridspec(2, 4, height_ratios=[3, 1.0], width_ratios=[1, 1, 1, 0.05], hspace=0.12, wspace=0.08,
                          top=0.86, bottom=0.06, left=0.04, right=0.94)
    im = None
    for j, (plane, (fn, letters, axis)) in enumerate(PLANES.items()):
        ax = fig.add_subplot(gs[0, j])
        idx = c[axis]
        im = _panel(ax, fn(ct, idx), None if mv is None else fn(mv, idx), letters, opacity,
                    f"{plane} {idx + 1}/{s}", extent) or im
    # Axial strip: `strip` slices evenly through the crop (the nodule sits in the middle ones).
    sub = gs[1, :3].subgridspec(1, strip, wspace=0.03)
    idxs = np.linspace(0, s - 1, strip + 2)[1:-1].round().astype(int)
    for j, idx in enumerate(idxs):
        ax = fig.add_subplot(sub[0, j])
        ax.imshow(ct[idx], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if mv is not None:
            ax.imshow(mv[idx], cmap=CMAP, vmin=0, vmax=1, interpolation="bilinear",
                      alpha=overlay_alpha(mv[idx], opacity))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"z {idx + 1}", fontsize=7, pad=2)
    cax = fig.add_subplot(gs[0, 3])
    sm = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=CMAP)
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label("attribution (normalised)" if amap is not None else "", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if amap is None:
        cax.set_visible(False)
    fig.suptitle(title_text(summary, amap), fontsize=11)
    fig.text(0.01, 0.01, f"CT window W{LUNG_WINDOW[0]:.0f} / L{LUNG_WINDOW[1]:.0f} HU; "
                         f"{s}x{s}x{s} crop at {spacing_mm:g} mm; axial strip rows A->P, columns R->L",
             fontsize=7, color="dimgray")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path


def render_overview_png(crop_hu: np.ndarray, maps: Sequence[AttributionMap], summary: dict[str, Any],
                        path: str | Path, *, opacity: float = 0.45, dpi: int = 100) -> Path:
    """All maps side by side: one row per map, the three central planes in each row."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    crop_hu = np.asarray(crop_hu)
    s = crop_hu.shape[0]
    ct = window_ct(crop_hu)
    rows = max(1, len(maps))
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, 2.3 * rows + 0.8), dpi=dpi, squeeze=False)
    for r in range(rows):
        amap = maps[r] if maps else None
        for j, (plane, (fn, letters, axis)) in enumerate(PLANES.items()):
            ax = axes[r, j]
            _panel(ax, fn(ct, s // 2), None if amap is None else fn(amap.values, s // 2), letters, opacity,
                   plane if r == 0 else "", float(s))
            if j == 0 and amap is not None:
                ax.set_ylabel(amap.label.replace(" (", "\n("), fontsize=8)
    fig.subplots_adjust(right=0.88, top=1 - 0.75 / (2.3 * rows + 0.8), hspace=0.15, wspace=0.05)
    cax = fig.add_axes([0.9, 0.1, 0.025, 0.7])
    fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=CMAP), cax=cax).ax.tick_params(labelsize=7)
    fig.suptitle(title_text(summary), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path
