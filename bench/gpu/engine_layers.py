#!/usr/bin/env python3
"""Per-layer times of the Triton engine: every way to run each conv, and launch sweeps (GPU only).

For every layer of the benchmark ensemble (``bench/ensemble.py``'s five members) at one batch
size: our implicit-GEMM kernel with one-voxel rows at several (reduction chunk, warps, pipeline
stages, voxels per program), with rows of 2 or 4 voxels (the x-run kernel), the x-folded cuDNN
2D conv (:mod:`naslung.ensemble.fold`, conv alone and with its epilogue), what the engine's
``plan_conv`` chose and its time (and with the block's shortcut fused), each CBAM pass, and the
byte floor (input + output once at the measured copy bandwidth); also the whole forward (no
graph) with the engine's steps switched off. Prints a table, writes JSON. The source of
``plan_conv``'s rules and of the launch defaults; ``docs/benchmarks.md`` quotes the outcome.

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
from naslung.ensemble import fold  # noqa: E402
from naslung.ensemble import kernels as K  # noqa: E402
from naslung.ensemble.engine import FastEnsemble  # noqa: E402


DRY = "--dry-run" in sys.argv  # CPU, TRITON_INTERPRET=1, tiny sizes: checks the script, times nothing useful


def bench(fn) -> float:
    """Median ms of ``fn``; inf when the launch does not fit the card (e.g. shared memory)."""
    try:
        return _bench(fn)
    except Exception as e:  # noqa: BLE001 -- a sweep point that cannot launch is a result, not an error
        if "out of resource" not in str(e):
            raise
        return float("inf")


def _bench(fn) -> float:
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


def repack(conv, dtype: torch.dtype, kb: int | None = None, xb: int = 1) -> K.PackedConv:
    """A member's conv (its BN-folded weights) packed for our kernel with reduction chunk ``kb`` or
    for ``xb``-voxel rows."""
    return K.pack_conv(conv.weight, conv.bias, conv.stride, conv.pad, dtype, kb=kb, xb=xb)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1, 8^3 crops: checks the script only")
    args = p.parse_args()
    dev = torch.device("cpu" if args.dry_run else "cuda")
    size = 8 if args.dry_run else 32
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    bw = 1e10 if args.dry_run else copy_bandwidth(dev)
    name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(dev)
    print(f"{name} | copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    torch.backends.cudnn.benchmark = True
    ens = make_ensemble(member_configs("distinct", size)).to(dev)
    fast = FastEnsemble(ens, dev, backend="triton", cuda_graphs=False)  # the default plan (plan_conv)
    plain = FastEnsemble(ens, dev, backend="triton", cuda_graphs=False, fold_max_cin=0, xrun=False)  # one-voxel rows
    x = torch.rand(args.batch, 1, size, size, size, device=dev)
    rows, seen = [], set()
    # one-voxel rows: (reduction chunk as a multiple of the default, warps, pipeline stages, voxels
    # per program); None = the kernel's default. (One stage -- plain loads that L1 caches, instead
    # of cp.async copies that bypass it -- and 8-byte copies were slower on the H200: run 14, 16.)
    sweep = [(1, 4, None, None), (2, 4, None, None)] if args.dry_run else [
        (1, 4, None, None), (1, 4, 2, None), (2, 4, None, None), (4, 4, None, None), (1, 4, None, 512)]
    # rows of several voxels (3x3x3 stride-1 convs): (voxels per row, warps, stages, voxels per program)
    xrun_sweep = [(2, 4, None, None), (4, 4, None, None)] if args.dry_run else [
        (2, 4, None, None), (2, 8, None, 512), (2, 8, 2, 512), (4, 8, 2, 512)]

    def conv_row(tag, h, conv, plain_conv, res=None, sc=None):
        """Time one conv every way (our kernel with launch sweeps, x-folded cuDNN); return the engine's output."""
        member = fast.groups[0][1]
        out = member.conv(h, conv, residual=res)
        width = h.shape[3] - 2
        packed = plain_conv.packed(width)  # one-voxel rows, default launch
        key = (tuple(h.shape), packed.cout, packed.ks, packed.stride, res is not None)
        if key in seen:
            return out
        seen.add(key)
        row = {"layer": tag, "in": list(h.shape), "cout": packed.cout, "k": packed.ks, "stride": packed.stride,
               "chosen": conv.plan(width), "triton_ms": {}}
        for mult, w, st, bm in sweep:
            kb = packed.kb * mult
            if kb > 128 or kb >= 2 * packed.nchunk * packed.kb:
                continue
            pk = repack(plain_conv, h.dtype, kb=kb) if mult != 1 else packed
            row["triton_ms"][f"kb{kb}x{w}x{st or 'd'}m{bm or 'd'}"] = bench(
                lambda: K.conv3d(h, pk, residual=res, num_warps=w, num_stages=st, block_m=bm))
        if packed.ks == 3 and packed.stride == 1:
            for xb, w, st, bm in xrun_sweep:
                pk = repack(plain_conv, h.dtype, xb=xb)
                row["triton_ms"][f"xrun{xb}x{w}x{st or 'd'}m{bm or 'd'}"] = bench(
                    lambda: K.conv3d(h, pk, residual=res, num_warps=w, num_stages=st, block_m=bm))
        if packed.ks == 3:
            fc = fold.pack_folded(conv.weight, conv.bias, packed.stride, 1, h.dtype)
            row["fold_conv_ms"] = bench(lambda: fold.folded_conv(h, fc))
            row["fold_ms"] = bench(lambda: K.bias_act_pad(fold.folded_conv(h, fc), fc.bias, residual=res))
        row["engine_ms"] = bench(lambda: member.conv(h, conv, residual=res))
        if sc is not None:  # the block's shortcut in this conv's epilogue instead of a residual buffer
            row["engine_fused_shortcut_ms"] = bench(lambda: member.conv(h, conv, shortcut=sc))
        row["floor_ms"] = (h.numel() + out.numel()) * h.element_size() / bw * 1e3
        rows.append(row)
        best = min(row["triton_ms"].items(), key=lambda kv: kv[1])
        print(f"  {tag}: engine ({row['chosen']}) {row['engine_ms']:.3f}, one-voxel rows "
              f"{next(iter(row['triton_ms'].values())):.3f}, best of our kernel {best[1]:.3f} ({best[0]}), "
              f"fold {row.get('fold_ms', float('nan')):.3f}", flush=True)
        return out

    def cbam_rows(tag, h, p, member):
        if p is None:
            return h
        n, dp, hp, wp, c = h.shape
        row = {"layer": tag, "in": list(h.shape)}
        g = member.channel_gate(h, p)
        desc = K.cbam_desc(h, g)
        logits = fold.folded_conv(desc, p["spatial"], x_border=0)[..., 0]
        row["stats_ms"] = bench(lambda: K.channel_stats(h))
        row["gate_mlp_ms"] = bench(lambda: member.channel_gate(h, p))
        row["desc_ms"] = bench(lambda: K.cbam_desc(h, g))
        row["gate_conv_ms"] = bench(lambda: fold.folded_conv(desc, p["spatial"], x_border=0))
        row["apply_ms"] = bench(lambda: K.cbam_apply(h, logits, g, naslung=p["naslung"]))
        row["total_ms"] = bench(lambda: member.apply_cbam(h, p))
        row["floor_ms"] = 3 * h.numel() * h.element_size() / bw * 1e3
        rows.append(row)
        return member.apply_cbam(h, p)

    ens_ms = bench(lambda: fast._fn(x))
    variants = {"one-voxel rows only": plain}
    for label, kw in (("no 2-voxel rows", {"xrun": False}), ("shortcuts unfused", {"fuse_shortcut": False}),
                      ("neither", {"xrun": False, "fuse_shortcut": False})):
        if not args.dry_run or label == "neither":
            variants[label] = FastEnsemble(ens, dev, backend="triton", cuda_graphs=False, **kw)
    variant_ms = {k: bench(lambda: v._fn(x)) for k, v in variants.items()}
    print(f"whole engine forward (no graph) {ens_ms:.2f} ms -> {args.batch / ens_ms * 1e3:,.0f} crops/s; "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in variant_ms.items()), flush=True)
    stems = fast._shared_stem(x) if fast._shared_stem is not None else None
    if fast._shared_stem is not None:
        xp = K.to_padded(x, dtype)
        row = {"layer": "shared stem0", "in": list(xp.shape), "cout": fast._shared_stem.packed.cout,
               "triton_ms": {"split": bench(lambda: fast._shared_stem(x))}, "k": 3, "stride": 1, "chosen": "kernel",
               "floor_ms": (xp.numel() + stems.numel()) * 2 / bw * 1e3}
        rows.append(row)
    totals = {}
    for i, ((_, m), (_, mp)) in enumerate(zip(fast.groups, plain.groups)):
        h = stems[i] if stems is not None else m.conv(K.to_padded(x, dtype), m.stem[0])
        totals[i] = bench(lambda: m.tail(h))
        h = conv_row(f"m{i} stem1", h, m.stem[1], mp.stem[1])
        h = cbam_rows(f"m{i} stem cbam", h, m.stem_cbam, m)
        for s, ((down, blocks, cbam), (pdown, pblocks, _)) in enumerate(zip(m.stages, mp.stages)):
            h = conv_row(f"m{i} s{s} down", h, down, pdown)
            for b, ((short, c1, c2), (pshort, pc1, pc2)) in enumerate(zip(blocks, pblocks)):
                r = conv_row(f"m{i} s{s}b{b} short", h, short, pshort)
                y = conv_row(f"m{i} s{s}b{b} c1", h, c1, pc1)
                h = conv_row(f"m{i} s{s}b{b} c2+res", y, c2, pc2, r,
                             sc=(h, short) if short.fusable_shortcut else None)
            h = cbam_rows(f"m{i} s{s} cbam", h, cbam, m)
    print(f"member tails ms (batch {args.batch}): {', '.join(f'{v:.2f}' for v in totals.values())} "
          f"= {sum(totals.values()):.2f} ms")
    print(f"{'layer':<20} {'in':<24} {'cout':>4} {'k/s':>4} {'our kernel best':>23} {'fold':>7} {'(conv)':>7} "
          f"{'engine':>14} {'floor':>6}")
    sums = defaultdict(float)
    for r in rows:
        if "triton_ms" in r:
            cfg, ms = min(r["triton_ms"].items(), key=lambda kv: kv[1])
            fold_ms = r.get("fold_ms", float("nan"))
            engine_ms = r.get("engine_ms", ms)
            sums["one_voxel_rows_default"] += next(iter(r["triton_ms"].values()))
            sums["engine"] += engine_ms
            sums["best_of_all"] += min(ms, fold_ms) if fold_ms == fold_ms else ms
            print(f"{r['layer']:<20} {str(r['in']):<24} {r['cout']:>4} {r['k']}/{r['stride']:<2} {ms:8.3f} {cfg:>14} "
                  f"{fold_ms:7.3f} {r.get('fold_conv_ms', float('nan')):7.3f} {r['chosen']:>6} {engine_ms:7.3f} "
                  f"{r['floor_ms']:6.3f}")
        else:
            sums["cbam"] += r["total_ms"]
            print(f"{r['layer']:<20} {str(r['in']):<24} cbam {r['total_ms']:.3f} = stats {r['stats_ms']:.3f} "
                  f"+ mlp {r['gate_mlp_ms']:.3f} (incl. stats) desc {r['desc_ms']:.3f} + gate {r['gate_conv_ms']:.3f} "
                  f"+ apply {r['apply_ms']:.3f} | floor {r['floor_ms']:.3f}")
    print("sums over distinct layers (ms):", {k: round(v, 3) for k, v in sums.items()})
    if args.out:
        args.out.write_text(json.dumps({"device": name, "copy_bw": bw, "batch": args.batch, "member_tail_ms": totals,
                                        "engine_forward_ms": ens_ms, "variants_forward_ms": variant_ms,
                                        "rows": rows, "sums": sums}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
