"""Explain one prediction: attention / attribution maps as PNG figures, an offline HTML viewer and NIfTI files."""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung explain --bundle runs/bundle --input ../shared/data/lidc-voi/images/LIDC-IDRI-0007_R_1.nii.gz \\
      --mask ../shared/data/lidc-voi/masks/LIDC-IDRI-0007_R_1.nii.gz --out runs/explain/0007
  naslung explain --bundle runs/bundle --input scan.mhd --world -48.5 45.4 -90.2 --methods cbam,gradcam --out out/
  naslung explain --model-dir runs/train/fold0 --input crop.npy --out out/   # a (S,S,S) HU crop, no geometry

The crop centre is --world (x y z, LPS mm as in LUNA16), else the --mask centroid, else the centre of
the volume. Writes OUT/overview.png, OUT/<map>.png, OUT/viewer.html, OUT/nifti/*.nii.gz and
OUT/explanation.json.
"""

METHOD_HELP = "comma-separated: cbam (native CBAM attention, every stage), gradcam (last stage), ig, occlusion"


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explain", help="explain a prediction (PNG, HTML viewer, NIfTI)",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="ensemble bundle directory (from `naslung ensemble`; default: the "
                                      "shipped models/lidc-voi-ensemble)")
    src.add_argument("--model-dir", help="a single training checkpoint directory (checkpoint.json + weights)")
    p.add_argument("--input", required=True,
                   help="CT volume (NIfTI, .mhd, .nrrd, DICOM directory) or a .npy (S,S,S) HU crop")
    p.add_argument("--world", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="crop centre in world LPS mm (default: the --mask centroid, else the volume centre)")
    p.add_argument("--mask", default=None, help="nodule mask on the volume's grid: centre on its centroid")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--methods", default="cbam,gradcam,ig,occlusion", help=METHOD_HELP)
    p.add_argument("--target", choices=("predicted", "benign", "malignant"), default="predicted",
                   help="class whose evidence the maps show")
    p.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients integration steps")
    p.add_argument("--occlusion-window", type=int, default=None, help="occlusion cube edge in voxels (default: crop size / 4)")
    p.add_argument("--occlusion-stride", type=int, default=None, help="occlusion stride in voxels (default: window / 2)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-png", action="store_true", help="skip PNG figures")
    p.add_argument("--no-html", action="store_true", help="skip the HTML viewer")
    p.add_argument("--no-nifti", action="store_true", help="skip NIfTI export")
    return p


def run(args: argparse.Namespace) -> int:
    import logging
    import time
    from pathlib import Path

    import numpy as np

    from naslung.explain.core import CLASS_NAMES, explain
    from naslung.explain.nifti import Geometry
    from naslung.explain.report import write_explanation

    log = logging.getLogger("naslung.explain")
    t0 = time.perf_counter()
    predictor, spec, source = _load_predictor(args)
    inp = Path(args.input)
    facts: dict[str, str] = {"input": inp.name, "model": source}
    geometry = None
    if inp.suffix == ".npy":
        from naslung.data.npyfile import check_crop_shape, load_npy

        crop = load_npy(inp)
        check_crop_shape(crop, spec.shape, inp)
        if args.world is not None:
            geometry = Geometry.for_crop(args.world, spec)
            facts["world (LPS mm)"] = " ".join(f"{v:.1f}" for v in args.world)
        else:
            log.warning("%s is a bare array: NIfTI files get a grid at the origin, not the scan's", inp)
            facts["geometry"] = "unknown (bare .npy crop)"
    else:
        from naslung.data.crop import crop_at_world, crop_coverage, mask_centroid_world
        from naslung.data.volume import read_volume

        image = read_volume(inp)
        if args.world is not None:
            center = tuple(args.world)
            how = "--world"
        elif args.mask:
            center = mask_centroid_world(read_volume(args.mask), source=args.mask)
            how = "mask centroid"
        else:
            size = np.asarray(image.GetSize(), dtype=float)
            center = tuple(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
            how = "volume centre"
        crop = crop_at_world(image, center, spec, source=str(inp))
        geometry = Geometry.for_crop(center, spec)
        facts["centre (LPS mm)"] = " ".join(f"{v:.1f}" for v in center) + f"  ({how})"
        facts["crop inside scan"] = f"{100 * crop_coverage(image, center, spec):.0f} %"
    facts["crop"] = f"{spec.size}^3 at {spec.spacing_mm:g} mm"
    target = None if args.target == "predicted" else CLASS_NAMES.index(args.target)
    methods = [m for m in args.methods.split(",") if m.strip()]
    print(f"explaining {inp.name} with {source} ({', '.join(methods)}) ...", flush=True)
    expl = explain(predictor, crop, spec, methods, target=target, ig_steps=args.ig_steps,
                   occlusion_window=args.occlusion_window, occlusion_stride=args.occlusion_stride)
    record = write_explanation(args.out, expl, crop, spec, geometry, facts=facts, png=not args.no_png,
                               html=not args.no_html, nifti=not args.no_nifti)
    s = expl.summary()
    print(f"prediction: {s['predicted_name']}  P(malignant) = {s['p_malignant']:.3f}"
          f"   attributions explain '{s['target_name']}'" + (" (CBAM attention is class-independent)"
                                                             if any(m.method == "cbam" for m in expl.maps) else ""))
    for name, p in expl.member_proba.items():
        print(f"  member {name:<24} P(malignant) = {p[1]:.3f}  weight {expl.member_weights.get(name, 1.0):.3f}")
    print(f"{'map':<16} {'layer':<12} {'raw min':>10} {'raw max':>10}  seconds")
    for m in expl.maps:
        print(f"{m.key:<16} {m.layer:<12} {m.raw_min:>10.3g} {m.raw_max:>10.3g}  {expl.timings_s.get(m.method, 0):.1f}")
    files = record["files"]
    out = Path(args.out)
    print(f"wrote {out}/explanation.json" + (f", {out}/{files['overview_png']} + {len(files['png'])} PNGs"
                                             if "png" in files else "")
          + (f", {out}/{files['html']}" if "html" in files else "")
          + (f", {len(files['nifti'])} NIfTI files in {out}/nifti" if "nifti" in files else "")
          + f"  ({time.perf_counter() - t0:.1f}s)")
    return 0


def _load_predictor(args: argparse.Namespace):
    """(predictor, CropSpec, description) from --bundle or --model-dir."""
    from pathlib import Path

    from naslung.data.spec import CropSpec

    if not args.bundle and not args.model_dir:
        from naslung.ensemble.bundle import default_bundle

        args.bundle = str(default_bundle())
    if args.bundle:
        from naslung.ensemble import load_bundle

        ens = load_bundle(args.bundle, device=args.device)
        return ens, ens.spec, f"bundle {Path(args.bundle).name} v{ens.version} ({len(ens)} members, {ens.rule})"
    from naslung.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.model_dir)
    model = ckpt.build_model(args.device)
    spec_d = ckpt.extra.get("crop_spec")
    if spec_d:
        spec = CropSpec.from_dict(spec_d)
    else:
        import logging

        spec = CropSpec(size=ckpt.model_cfg.in_size)
        logging.getLogger("naslung.explain").warning(
            "%s records no crop spec; assuming %s", args.model_dir, spec)
    if spec.size != ckpt.model_cfg.in_size:
        raise ValueError(f"{args.model_dir}: crop spec size {spec.size} != model input {ckpt.model_cfg.in_size}")
    return model, spec, f"checkpoint {Path(args.model_dir).name} ({ckpt.model_cfg.key})"
