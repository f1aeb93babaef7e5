#!/usr/bin/env python3
"""Probe: the x-run conv kernel with rows of 2, 4 and 8 voxels against what the engine runs now
(x-folded cuDNN + its epilogue pass, or our kernel), on the benchmark's layer shapes, batch 1024.

Rows of 8 voxels over 4 channels make a (dz, dy) run of 40 elements; a reduction chunk then holds
a dz's three runs (120 of 128 columns used) instead of padding each run to 64. The shared first
conv (1 -> 20 channels, split into five members' buffers) is timed the same way.

    python bench/gpu/xrun_probe.py 1024 [--dry-run]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from naslung.ensemble import fold  # noqa: E402
from naslung.ensemble import kernels as K  # noqa: E402

DRY = "--dry-run" in sys.argv  # TRITON_INTERPRET=1 on CPU, tiny sizes: checks the script only
dev = torch.device("cpu" if DRY else "cuda")
dtype = torch.float32 if DRY else torch.bfloat16
N = 2 if DRY else int(next((a for a in sys.argv[1:] if a.isdigit()), 1024))
torch.backends.cudnn.benchmark = True


def bench(fn) -> float:
    if DRY:
        fn()
        return 0.0
    from triton.testing import do_bench
    try:
        return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))
    except Exception as e:  # noqa: BLE001 -- a launch that does not fit is a result
        if "out of resource" not in str(e):
            raise
        return float("inf")


def padded(c, s):
    return K.bias_act_pad(torch.rand(N, s, s, s, c, device=dev, dtype=dtype), None, relu=False)


def layer(name, cin, cout, s, xbs, now):
    h = padded(cin, s)
    w, b = torch.randn(cout, cin, 3, 3, 3, device=dev) * 0.2, torch.randn(cout, device=dev)
    res = {}
    fc = fold.pack_folded(w, b, 1, 1, dtype)
    res["fold+pass"] = bench(lambda: K.bias_act_pad(fold.folded_conv(h, fc), fc.bias))
    p1 = K.pack_conv(w, b, 1, 1, dtype)
    res["one-voxel"] = bench(lambda: K.conv3d(h, p1))
    ref = K.conv3d(h, p1)
    for xb in xbs:
        p = K.pack_conv(w, b, 1, 1, dtype, xb=xb)
        err = (K.conv3d(h, p).float() - ref.float()).abs().max().item()
        for rows in ((64, 128, 256) if not DRY else (64,)):
            for warps in ((4, 8) if not DRY else (4,)):
                res[f"xrun{xb}{'g' if p.gdy > 1 else ''} r{rows} w{warps}"] = bench(
                    lambda: K.conv3d(h, p, block_m=rows * xb, num_warps=warps))
        res[f"xrun{xb} maxdiff"] = err
    best = min((v, k) for k, v in res.items() if "maxdiff" not in k)
    now_ms = res.get(now) or min(v for k, v in res.items() if k.startswith(now) and "maxdiff" not in k)
    print(f"{name:<16} now {now}: {now_ms:.3f} ms | best {best[1]} {best[0]:.3f} ms | "
          + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)


def stem0(name, members, width, s, xbs):
    x = padded(1, s)
    w, b = torch.randn(members * width, 1, 3, 3, 3, device=dev), torch.randn(members * width, device=dev)
    res = {}
    p1 = K.pack_conv(w, b, 1, 1, dtype)
    res["one-voxel"] = bench(lambda: K.conv3d(x, p1, out_split=width))
    ref = K.conv3d(x, p1, out_split=width)
    for xb in xbs:
        p = K.pack_conv(w, b, 1, 1, dtype, xb=xb, out_split=width)
        err = (K.conv3d(x, p, out_split=width).float() - ref.float()).abs().max().item()
        for rows in ((64, 128, 256) if not DRY else (64,)):
            for warps in ((4, 8) if not DRY else (4,)):
                res[f"xrun{xb}{'g' if p.gdy > 1 else ''} r{rows} w{warps}"] = bench(
                    lambda: K.conv3d(x, p, out_split=width, block_m=rows * xb, num_warps=warps))
        res[f"xrun{xb} maxdiff"] = err
    best = min((v, k) for k, v in res.items() if "maxdiff" not in k)
    print(f"{name:<16} now one-voxel: {res['one-voxel']:.3f} ms | best {best[1]} {best[0]:.3f} ms | "
          + ", ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)


if not DRY:
    print(torch.cuda.get_device_name(dev), "batch", N, "torch", torch.__version__, flush=True)
S = 8 if DRY else 32
stem0("stem0 1->5x4 @32", 5, 4, S, (4, 8))
layer("stem1 4->4 @32", 4, 4, S, (4, 8), "fold+pass")
layer("4->4 @16", 4, 4, S // 2, (2, 4, 8), "fold+pass")
layer("4->8 @16", 4, 8, S // 2, (4, 8), "fold+pass")
layer("8->8 @16", 8, 8, S // 2, (2, 4, 8), "fold+pass")
layer("4->16 @16", 4, 16, S // 2, (2, 4, 8), "xrun2")
layer("8->16 @16", 8, 16, S // 2, (2, 4, 8), "xrun2")
layer("16->16 @16", 16, 16, S // 2, (2, 4), "xrun2")
layer("16->32 @8", 16, 32, S // 4, (2, 4), "xrun2")
layer("32->32 @8", 32, 32, S // 4, (2, 4), "fold+pass")
