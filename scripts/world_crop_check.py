#!/usr/bin/env python3
"""Server-path check of a bundle: crop each VOI of one fold at its labels.csv world coordinate with
the server's crop function (``crop_at_world``) and the bundle's crop spec, then score the bundle.

Run on a fold the bundle did not train on (its validation fold for a ``--all-data`` bundle)::

    naslung prepare --source voi --folds 5 --fov-mm none --out runs/voi5
    python scripts/world_crop_check.py --data runs/voi5 --voi ../shared/data/lidc-voi
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from naslung.data.crop import crop_file_at_world
    from naslung.data.dataset import PreparedDataset
    from naslung.ensemble import load_bundle
    from naslung.ensemble.bundle import default_bundle
    from naslung.train.metrics import binary_metrics

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle directory (default: the shipped one)")
    p.add_argument("--data", required=True, help="prepared voi dataset with folds (for the fold and labels)")
    p.add_argument("--voi", required=True, help="the VOI directory the dataset was prepared from")
    p.add_argument("--fold", type=int, default=None, help="fold to check (default: the bundle's validation fold)")
    args = p.parse_args(argv)
    ens = load_bundle(args.bundle or default_bundle())
    ds = PreparedDataset.load(args.data)
    fold = args.fold if args.fold is not None else int(ens.manifest["training"]["val_fold"])
    rows = [r for r in ds.rows if int(r["fold"]) == fold]
    world = [(float(r["world_x"]), float(r["world_y"]), float(r["world_z"])) for r in rows]
    crops = np.stack([crop_file_at_world(str(Path(args.voi) / r["file"]), w, ens.spec) for r, w in zip(rows, world)])
    proba = ens.predict_proba(ens.spec.normalize_torch(torch.from_numpy(crops)).unsqueeze(1))[:, 1].numpy()
    m = binary_metrics(np.array([int(r["label"]) for r in rows]), proba)
    off = [np.linalg.norm(np.subtract(w, (float(r["center_x"]), float(r["center_y"]), float(r["center_z"]))))
           for r, w in zip(rows, world)]
    print(f"fold {fold}, crops cut at the world coordinate: n={m['n']} accuracy {m['accuracy']:.4f} "
          f"AUC {m['auc']:.4f}; world coordinate vs mask centroid: median {np.median(off):.2f} mm, "
          f"max {np.max(off):.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
