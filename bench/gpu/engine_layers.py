#!/usr/bin/env python3
"""Per-layer times of the Triton engine against cuDNN, and block-size sweeps (GPU only).

For every layer of the benchmark ensemble (``bench/ensemble.py``'s five members) at one batch
size: the Triton kernel at several (BLOCK_M, warps), cuDNN bf16 channels_last_3d and cuDNN fp32
NCDHW (the naive path) on the same shapes, and the byte floor (input + output once at the
measured copy bandwidth). Prints a table, writes JSON. Used to pick the kernels' launch
parameters; ``docs/benchmarks.md`` quotes the outcome.

    python bench/gpu/engine_layers.py --batch 1024 --out layers.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton.testing import do_bench  # noqa: E402

from ensemble import make_ensemble, member_configs  # noqa: E402
from naslung.ensemble import kernels as K  # noqa: E402
from naslung.ensemble.engine import FastEnsemble  # noqa: E402


DRY = "--dry-run" in sys.argv  # CPU, TRITON_INTERPRET=1, tiny sizes: checks the script, times nothing useful


def bench(fn) -> float:
    if DRY:
        import time

        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth(dev) -> float:
    a = torch.empty(2 ** 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * a.numel() / (ms / 1e3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, 8^3 crops: checks the script only")
    args = p.parse_args()
    dev = torch.device("cpu" if args.dry_run else "cuda")
    size = 8 if args.dry_run else 32
    bw = 1e10 if args.dry_run else copy_bandwidth(dev)
    name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(dev)
    print(f"{name} | copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    ens = make_ensemble(member_configs("distinct", size)).to(dev)
    fast = FastEnsemble(ens, dev, backend="triton", cuda_graphs=False)
    x = torch.rand(args.batch, 1, size, size, size, device=dev)
    rows, seen = [], set()
    sweep = [(64, 4)] if args.dry_run else [(64, 4), (128, 4), (256, 4), (128, 8), (256, 8)]
    cbam_sweep = [(None, 4)] if args.dry_run else [(None, 4), (64, 4), (128, 4), (256, 4), (128, 8)]

    def conv_row(tag, h, pc, res=None):
        key = ("conv", tuple(h.shape), pc.cout, pc.ks, pc.stride, res is not None)
        out = K.conv3d(h, pc, residual=res)
        if key in seen:
            return out
        seen.add(key)
        row = {"layer": tag, "in": list(h.shape), "cout": pc.cout, "k": pc.ks, "stride": pc.stride}
        row["triton_ms"] = {f"{bm}x{w}": bench(lambda: K.conv3d(h, pc, residual=res, block_m=bm, num_warps=w))
                            for bm, w in sweep}
        # cuDNN on the same data: bf16 channels_last_3d, and fp32 NCDHW (what the naive path runs)
        xi = K.interior(h).permute(0, 4, 1, 2, 3)
        wt = torch.randn(pc.cout, pc.cin, pc.ks, pc.ks, pc.ks, device=dev)
        xcl = xi.contiguous(memory_format=torch.channels_last_3d)
        wcl = wt.to(h.dtype).contiguous(memory_format=torch.channels_last_3d)
        row["cudnn_bf16_cl_ms"] = bench(lambda: F.conv3d(xcl, wcl, None, pc.stride, pc.pad))
        x32, w32 = xi.float().contiguous(), wt
        row["cudnn_fp32_ms"] = bench(lambda: F.conv3d(x32, w32, None, pc.stride, pc.pad))
        row["floor_ms"] = (h.numel() + out.numel()) * h.element_size() / bw * 1e3
        rows.append(row)
        return out

    def cbam_rows(tag, h, p, member):
        if p is None:
            return h
        n, dp, hp, wp, c = h.shape
        flat = h.view(n, -1, c)
        row = {"layer": tag, "in": list(h.shape)}
        row["reduce_ms"] = bench(lambda: (flat.sum(dim=1, dtype=torch.float32), flat.amax(dim=1)))
        g = torch.softmax(torch.randn(n, c, device=dev), 1)
        row["spatial_ms"] = {f"{bm}x{w}": bench(lambda: K.cbam_spatial(h, g, p["spatial"], naslung=p["naslung"],
                                                                        block_m=bm, num_warps=w))
                             for bm, w in cbam_sweep}
        row["floor_ms"] = 3 * h.numel() * h.element_size() / bw * 1e3
        rows.append(row)
        return member._apply_cbam(h, p)

    totals = {}
    ens_ms = bench(lambda: fast._fn(x))
    print(f"whole engine forward (no graph) {ens_ms:.2f} ms -> {args.batch / ens_ms * 1e3:,.0f} crops/s", flush=True)
    if fast._shared_stem is not None:
        conv_row("shared stem0", K.to_padded(x, torch.bfloat16 if not args.dry_run else torch.float32),
                 fast._shared_stem.packed)
    # the reduction chunk for the 4->4 stem conv
    xs4 = torch.rand(args.batch, size + 2, size + 2, size + 2, 4, device=dev).to(fast.dtype)
    for kb in (16, 32, 64, 128):
        pk = K.pack_conv(torch.randn(4, 4, 3, 3, 3, device=dev), torch.randn(4, device=dev), 1, 1, fast.dtype, kb=kb)
        for bm, w in sweep:
            ms = bench(lambda: K.conv3d(xs4, pk, block_m=bm, num_warps=w))
            rows.append({"layer": f"kb sweep 4->4 kb={kb}", "bm": bm, "warps": w, "ms": ms})
            print(f"kb sweep 4->4 kb={kb:<4} {bm}x{w}: {ms:.3f} ms", flush=True)
    for i, (_, fast_member) in enumerate(fast.groups):
        m = fast_member
        totals[i] = bench(lambda: m(x))
        h = K.to_padded(x, m.dtype)
        for j, pc in enumerate(m.stem):
            h = conv_row(f"m{i} stem{j}", h, pc)
        h = cbam_rows(f"m{i} stem cbam", h, m.stem_cbam, m)
        for s, (down, blocks, cbam) in enumerate(m.stages):
            h = conv_row(f"m{i} s{s} down", h, down)
            for b, (short, c1, c2) in enumerate(blocks):
                r = conv_row(f"m{i} s{s}b{b} short", h, short)
                y = conv_row(f"m{i} s{s}b{b} c1", h, c1)
                h = conv_row(f"m{i} s{s}b{b} c2+res", y, c2, r)
            h = cbam_rows(f"m{i} s{s} cbam", h, cbam, m)
    print(f"member totals ms (batch {args.batch}): {', '.join(f'{v:.2f}' for v in totals.values())} "
          f"= {sum(totals.values()):.2f} ms -> {args.batch / sum(totals.values()) * 1e3:,.0f} crops/s")
    print(f"{'layer':<22} {'in':<24} {'cout':>4} {'k/s':>4} {'best triton':>16} {'cudnn bf16cl':>12} "
          f"{'cudnn fp32':>10} {'floor':>7}")
    best = defaultdict(float)
    for r in rows:
        if "kb sweep" in r["layer"]:
            continue
        if "triton_ms" in r:
            cfg, ms = min(r["triton_ms"].items(), key=lambda kv: kv[1])
            best["triton"] += ms
            best["triton_64x4"] += r["triton_ms"].get("64x4", float("nan"))
            best["cudnn_bf16_cl"] += r["cudnn_bf16_cl_ms"]
            best["cudnn_fp32"] += r["cudnn_fp32_ms"]
            print(f"{r['layer']:<22} {str(r['in']):<24} {r['cout']:>4} {r['k']}/{r['stride']:<2} "
                  f"{ms:9.3f} {cfg:>6} {r['cudnn_bf16_cl_ms']:12.3f} {r['cudnn_fp32_ms']:10.3f} {r['floor_ms']:7.3f}")
        else:
            cfg, ms = min(r["spatial_ms"].items(), key=lambda kv: kv[1])
            best["cbam_spatial"] += ms
            best["cbam_reduce"] += r["reduce_ms"]
            print(f"{r['layer']:<22} {str(r['in']):<24} {'':>4} {'':>4} {ms:9.3f} {cfg:>6} "
                  f"{'reduce ' + format(r['reduce_ms'], '.3f'):>12} {'':>10} {r['floor_ms']:7.3f}")
    print("sums over distinct layers (ms):", {k: round(v, 3) for k, v in best.items()})
    if args.out:
        args.out.write_text(json.dumps({"device": name, "copy_bw": bw,
                                        "batch": args.batch, "member_ms": totals, "engine_forward_ms": ens_ms, "rows": rows,
                                        "sums": best}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
