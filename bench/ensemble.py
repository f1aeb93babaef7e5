#!/usr/bin/env python3
"""Naive vs fast ensemble inference: crops/s, speed-up, deviation, floors and peak memory.

The naive baseline is what NAS-Lung's test.py does: each member in turn, fp32, eager, BatchNorm as
its own layer (cuDNN/TF32 defaults untouched). The engine is :class:`naslung.ensemble.engine.FastEnsemble`.
Members are five seeded random-weight networks of about 0.3 GFLOP per 32^3 crop (1.5 GFLOP total);
BatchNorm statistics are randomised so that folding is not a no-op. Needs only torch + numpy.

    python bench/ensemble.py --device cuda --out bench-ensemble-cuda.json
    python bench/ensemble.py --device cpu --batches 1 8 32 --out bench-ensemble-cpu.json

Timing: warm-up calls first (compilation, autotuning and CUDA-graph capture happen there), then
the median of ``--repeats`` timed calls (CUDA events on GPU, perf_counter on CPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from naslung.ensemble.engine import FastEnsemble  # noqa: E402
from naslung.ensemble.naive import Ensemble  # noqa: E402
from naslung.models import build_model  # noqa: E402
from naslung.models.config import ModelConfig  # noqa: E402
from naslung.models.profile import count_macs  # noqa: E402

# Five different architectures from the paper's search space, each ~0.31-0.33 GFLOP per crop.
DISTINCT = [((8, 16), (32, 32), (64, 64)), ((16,), (32, 32), (64, 128)), ((8, 8, 16), (32,), (64, 64, 64)),
            ((16, 16), (32,), (64,)), ((4, 16), (32, 32, 32), (64,))]
# Card peaks (dense): bf16 tensor-core FLOP/s and memory bandwidth (vendor datasheets).
PEAKS = {"H100 PCIe": (756e12, 2.0e12), "H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12),
         "A100": (312e12, 2.0e12)}


def member_configs(kind: str, size: int) -> list[ModelConfig]:
    stages = DISTINCT if kind == "distinct" else [DISTINCT[0]] * 5
    return [ModelConfig(stages=s, in_size=size, name=f"m{i}") for i, s in enumerate(stages)]


def make_ensemble(cfgs: list[ModelConfig], seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    models = []
    for cfg in cfgs:
        m = build_model(cfg)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.1, 0.1)
        models.append(m.eval())
    return Ensemble(models, names=[c.name for c in cfgs], configs=cfgs, rule="mean")


def activation_bytes(model: torch.nn.Module, size: int, elem: int) -> int:
    """Bytes per crop if every conv output were written once and read once (layer-by-layer floor)."""
    total = [0]
    hooks = [m.register_forward_hook(lambda mod, i, o: total.__setitem__(0, total[0] + o[0].numel()))
             for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.inference_mode():
        model(torch.zeros(1, 1, size, size, size))
    for h in hooks:
        h.remove()
    return 2 * elem * total[0]


def time_fn(fn, x, device: torch.device, warmup: int, repeats: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn(x)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def peaks_for(device: torch.device, args) -> tuple[float | None, float | None, str]:
    if args.peak_tflops or args.peak_gbps:
        return ((args.peak_tflops or 0) * 1e12 or None, (args.peak_gbps or 0) * 1e9 or None, "command line")
    if device.type != "cuda":
        return None, None, "none (CPU: floors skipped)"
    name = torch.cuda.get_device_name(device)
    for key, (f, b) in PEAKS.items():
        if key in name:
            return f, b, f"datasheet {key}"
    return None, None, f"unknown card {name!r}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 32 256 1024 (cuda), 1 8 32 (cpu)")
    p.add_argument("--members", choices=("distinct", "same"), default="distinct",
                   help="five different architectures, or five copies of one (stacked into grouped convs)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--cuda-graphs", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    p.add_argument("--chunk", type=int, default=None, help="engine: max crops per internal call")
    p.add_argument("--direct-max-cin", type=int, default=None,
                   help="engine: convs with at most this many input channels as fused slice sums (default 0 = off; 4 is fast on an H100 but compiles for ~400 s)")
    p.add_argument("--group", action="store_true", help="engine: stack matching architectures (grouped convs)")
    p.add_argument("--stream-max-batch", type=int, default=1024,
                   help="engine (Triton, CUDA): members on their own streams up to this batch (0 = never)")
    p.add_argument("--fold-max-cin", type=int, default=8,
                   help="engine (Triton): 3x3x3 convs with at most this many input channels run x-folded on cuDNN "
                        "(0 = never)")
    p.add_argument("--no-xrun", action="store_true",
                   help="engine (Triton): no 2-voxel-row conv kernel (see naslung.ensemble.engine.plan_conv)")
    p.add_argument("--no-fuse-shortcut", action="store_true",
                   help="engine (Triton): residual shortcuts as launches of their own, not in the closing conv's epilogue")
    p.add_argument("--no-raw-cbam", action="store_true",
                   help="engine (Triton): the stem's folded conv writes its padded output before CBAM reads it")
    p.add_argument("--no-fold-unbordered", action="store_true",
                   help="engine (Triton): buffers read only by folded convs keep their x border")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                   help="engine: cuDNN/CPU convolutions (torch) or our Triton kernels (default: triton on CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--peak-gbps", type=float, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    batches = args.batches or ([1, 32, 256, 1024] if device.type == "cuda" else [1, 8, 32])
    opt = lambda v: None if v == "auto" else v == "on"
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    cfgs = member_configs(args.members, args.size)
    ens = make_ensemble(cfgs)
    flops = sum(2 * count_macs(m, args.size) for m in ens.models)
    act_bytes = sum(activation_bytes(m, args.size, 2) for m in ens.models)
    weight_bytes = sum(2 * sum(q.numel() for q in m.parameters()) for m in ens.models)
    in_bytes = 4 * args.size ** 3
    ens = ens.to(device)
    t0 = time.perf_counter()
    fast = FastEnsemble(ens, device, dtype=dtype, channels_last=opt(args.channels_last), group=args.group,
                        compile=opt(args.compile), cuda_graphs=opt(args.cuda_graphs),
                        compile_mode=None if args.compile_mode == "default" else args.compile_mode,
                        chunk=args.chunk, direct_max_cin=args.direct_max_cin, backend=args.backend,
                        stream_max_batch=args.stream_max_batch, fold_max_cin=args.fold_max_cin,
                        xrun=not args.no_xrun, fuse_shortcut=not args.no_fuse_shortcut,
                        raw_cbam=not args.no_raw_cbam, fold_unbordered=not args.no_fold_unbordered)
    build_s = time.perf_counter() - t0
    peak_flops, peak_bw, peak_src = peaks_for(device, args)

    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "members": args.members, "configs": [c.to_dict() for c in cfgs],
        "flops_per_crop": flops, "layer_bytes_per_crop_bf16": act_bytes, "input_bytes_per_crop": in_bytes,
        "engine": {"backend": fast.backend, "streams": len(fast._streams), "stream_max_batch": fast.stream_max_batch,
                   "fold_max_cin": fast.fold_max_cin, "xrun": fast.xrun, "fuse_shortcut": fast.fuse_shortcut,
                   "raw_cbam": fast.raw_cbam, "fold_unbordered": fast.fold_unbordered,
                   "dtype": str(fast.dtype), "channels_last": fast.channels_last, "compiled": fast.compiled,
                   "cuda_graphs": fast.cuda_graphs, "groups": [len(i) for i, _ in fast.groups],
                   "chunk": fast.chunk, "direct_max_cin": fast.direct_max_cin, "build_s": build_s},
        "peaks": {"flops": peak_flops, "bytes_per_s": peak_bw, "source": peak_src},
        "warmup": args.warmup, "repeats": args.repeats, "results": [],
    }
    print(f"device {info['device_name']} | torch {torch.__version__} | {len(cfgs)} members ({args.members}), "
          f"{flops / 1e9:.3f} GFLOP/crop | engine {info['engine']}", flush=True)
    header = (f"{'batch':>5} {'naive/s':>10} {'engine/s':>10} {'ratio':>6} {'max|dp|':>9} {'FLOP floor/s':>13} "
              f"{'byte floor/s':>13} {'naive MB':>9} {'engine MB':>9}")
    print(header)
    gen = torch.Generator().manual_seed(1)
    for b in batches:
        x = torch.rand(b, 1, args.size, args.size, args.size, generator=gen).to(device)
        row: dict = {"batch": b}
        for name, fn in (("naive", ens.predict_proba), ("engine", fast.predict_proba)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                med, times = time_fn(fn, x, device, args.warmup, args.repeats)
            except Exception as e:  # record and go on: one failing path must not lose the others
                row[name] = {"error": f"{type(e).__name__}: {e}"[:500], "crops_per_s": float("nan")}
                print(f"  batch {b} {name}: FAILED {row[name]['error'][:200]}", flush=True)
                if device.type == "cuda" and "CUDA error" in str(e):
                    raise  # the context is unusable after an illegal access
                continue
            row[name] = {"median_s": med, "crops_per_s": b / med, "times_s": times,
                         "first_calls_s": time.perf_counter() - t0 - sum(times)}
            if device.type == "cuda":
                row[name]["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
        if "error" in row["engine"]:
            row["max_abs_diff_proba"] = row["max_abs_diff_member_proba"] = float("nan")
        else:
            ref_members = ens.member_proba(x).float()
            got_members = fast.member_proba(x).float()
            row["max_abs_diff_proba"] = (ens.predict_proba(x).float() - fast.predict_proba(x).float()
                                         ).abs().max().item()
            row["max_abs_diff_member_proba"] = (ref_members - got_members).abs().max().item()
        row["ratio"] = row["engine"]["crops_per_s"] / row["naive"]["crops_per_s"]
        row["flop_floor_crops_per_s"] = peak_flops / flops if peak_flops else None
        row["byte_floor_crops_per_s"] = {
            "compulsory": peak_bw / (in_bytes + 8 + weight_bytes / b) if peak_bw else None,
            "layer_by_layer_bf16": peak_bw / act_bytes if peak_bw else None}
        info["results"].append(row)
        mb = lambda k: f"{row[k].get('peak_mem_bytes', 0) / 2**20:9.0f}" if device.type == "cuda" else f"{'-':>9}"
        ff = f"{row['flop_floor_crops_per_s']:13.3g}" if peak_flops else f"{'-':>13}"
        bf = row["byte_floor_crops_per_s"]["layer_by_layer_bf16"]
        bf = f"{bf:13.3g}" if bf else f"{'-':>13}"
        print(f"{b:5d} {row['naive']['crops_per_s']:10.1f} {row['engine']['crops_per_s']:10.1f} {row['ratio']:6.2f} "
              f"{row['max_abs_diff_proba']:9.2e} {ff} {bf} {mb('naive')} {mb('engine')}", flush=True)
        if args.out:  # after every batch size, so a time-out keeps what was measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(info, indent=2, default=str) + "\n")
    if peak_bw:
        print(f"byte floor: layer-by-layer bf16 (each conv output written+read once); compulsory-only floor "
              f"(input+weights+output) in the JSON. Peaks: {peak_src}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
