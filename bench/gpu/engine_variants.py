#!/usr/bin/env python3
"""Whole-engine variants as the service runs them (CUDA graph, streams): one child process per
variant, so that a failing variant (e.g. an illegal address) cannot poison the others' timings.

Prints crops/s per variant and batch, and the max deviation from the fp32 reference.

    python bench/gpu/engine_variants.py --batches 256 1024 --out variants.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "default": {},
    "stem CBAM on padded output": {"raw_cbam": False},
    "folded inputs with x border": {"fold_unbordered": False},
    "no 2-voxel rows": {"xrun": False},
    "shortcuts unfused": {"fuse_shortcut": False},
    "neither": {"xrun": False, "fuse_shortcut": False},
    "never folded": {"fold_max_cin": 0},
    "never folded, one-voxel rows": {"fold_max_cin": 0, "xrun": False},
}


def child(label: str, batches: list[int]) -> dict:
    import torch
    from triton.testing import do_bench

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ensemble import make_ensemble, member_configs
    from naslung.ensemble.engine import FastEnsemble

    ens = make_ensemble(member_configs("distinct", 32)).to("cuda")
    fast = FastEnsemble(ens, "cuda", **VARIANTS[label])
    out = {}
    for n in batches:
        x = torch.rand(n, 1, 32, 32, 32, device="cuda")
        dev = (fast.member_proba(x) - ens.member_proba(x).float()).abs().max().item()
        torch.cuda.synchronize()
        ms = float(do_bench(lambda: fast.member_proba(x), warmup=10, rep=200, return_mode="median"))
        out[n] = {"ms": ms, "crops_per_s": n / ms * 1e3, "max_dev": dev}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batches)))
        return 0
    results = {}
    for label in args.variants:
        r = subprocess.run([sys.executable, __file__, "--child", label, "--batches", *map(str, args.batches)],
                           capture_output=True, text=True, env=dict(os.environ, CUDA_LAUNCH_BLOCKING="0"), timeout=300)
        if r.returncode:  # again with synchronous launches, so that the traceback names the failing kernel
            r = subprocess.run([sys.executable, __file__, "--child", label, "--batches", str(args.batches[0])],
                               capture_output=True, text=True, env=dict(os.environ, CUDA_LAUNCH_BLOCKING="1"),
                               timeout=300)
            results[label] = {"error": (r.stderr or r.stdout)[-3000:]}
            print(f"{label:<32} FAILED:\n{results[label]['error'][-2500:]}", flush=True)
            continue
        results[label] = json.loads(r.stdout.strip().splitlines()[-1])
        cells = [f"b{n}: {v['crops_per_s']:>9,.0f}/s ({v['ms']:.2f} ms, dev {v['max_dev']:.1e})"
                 for n, v in results[label].items()]
        print(f"{label:<32} " + "  ".join(cells), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
