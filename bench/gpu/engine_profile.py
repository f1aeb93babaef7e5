#!/usr/bin/env python3
"""Where the Triton engine's GPU time goes: kernel times from the CUDA profiler (CUPTI), per kernel.

Runs the benchmark ensemble (``bench/ensemble.py``'s five members) at one batch size, members
in turn (no streams, no CUDA graph) so that the kernels' own durations add up, and prints the
kernels grouped by name with their total and share of the GPU-busy time, next to the wall time
of the same forward (with and without streams). The per-layer sweeps are in ``engine_layers.py``;
this answers "which kind of work dominates" without launch overhead in the figures.

    python bench/gpu/engine_profile.py --batch 1024 --out profile.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton.testing import do_bench  # noqa: E402

from ensemble import make_ensemble, member_configs  # noqa: E402
from naslung.ensemble.engine import FastEnsemble  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--iters", type=int, default=5, help="profiled forwards (default 5)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    dev = torch.device("cuda")
    ens = make_ensemble(member_configs("distinct", 32)).to(dev)
    x = torch.rand(args.batch, 1, 32, 32, 32, device=dev)
    walls = {}
    for label, smb in (("streams", 1 << 30), ("in turn", 0)):
        fast = FastEnsemble(ens, dev, backend="triton", stream_max_batch=smb)
        fast.member_proba(x)
        walls[label + " (graph)"] = float(do_bench(lambda: fast.member_proba(x), warmup=10, rep=100,
                                                   return_mode="median"))
    fast = FastEnsemble(ens, dev, backend="triton", cuda_graphs=False, stream_max_batch=0)
    with torch.inference_mode():
        for _ in range(3):
            fast._fn(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                fast._fn(x)
            torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name if len(e.name) < 90 else e.name[:87] + "..."
            per[name][0] += e.device_time_total / 1e3 / args.iters  # ms per forward
            per[name][1] += 1
    busy = sum(v[0] for v in per.values())
    print(f"{torch.cuda.get_device_name(dev)} batch {args.batch}: GPU-busy {busy:.2f} ms per forward (members in "
          f"turn, no graph); wall with CUDA graph: " + ", ".join(f"{k} {v:.2f} ms" for k, v in walls.items()))
    print(f"{'kernel':<92} {'ms/fwd':>7} {'share':>6} {'calls':>6}")
    rows = sorted(per.items(), key=lambda kv: -kv[1][0])
    for name, (ms, calls) in rows:
        print(f"{name:<92} {ms:7.3f} {ms / busy:6.1%} {calls // args.iters:>6}")
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(dev), "batch": args.batch,
                                        "gpu_busy_ms": busy, "wall_ms": walls,
                                        "kernels": [{"name": n, "ms": v[0], "calls": v[1] // args.iters}
                                                    for n, v in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
