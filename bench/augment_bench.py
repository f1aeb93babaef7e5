"""Throughput of the batched augmentation (naslung.data.augment) vs. a per-sample loop.

Runs with only torch + numpy (plus this repository on the path):

    python3 bench/augment_bench.py --device cuda --out runs/bench/augment_cuda.json
    python3 bench/augment_bench.py --device cpu --batch 32 --iters 5 --out runs/bench/augment_cpu.json

Prints one table row per (batch size, method) and writes the same rows as JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from naslung.data.augment import AugmentConfig, augment_batch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_sample_loop(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """The usual Dataset-style augmentation: one sample at a time (reference for the speed-up)."""
    out = []
    for i in range(len(x)):
        out.append(augment_batch(x[i:i + 1], cfg, g))
    return torch.cat(out)


def time_it(fn, x, cfg, device, iters: int, warmup: int = 3) -> float:
    g = torch.Generator().manual_seed(0)
    for _ in range(warmup):
        fn(x, cfg, g)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x, cfg, g)
    _sync(device)
    return (time.perf_counter() - t0) / iters * 1000.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=32, help="crop edge (voxels)")
    p.add_argument("--batch", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--border-jitter", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = AugmentConfig(border_jitter=args.border_jitter)
    rows = []
    print(f"{'device':<10} {'batch':>6} {'method':<12} {'ms/batch':>10} {'crops/s':>12}")
    for n in args.batch:
        x = torch.rand(n, 1, args.size, args.size, args.size, device=device)
        for name, fn in (("batched", augment_batch), ("per-sample", per_sample_loop)):
            iters = args.iters if name == "batched" else max(1, args.iters // 4)
            ms = time_it(fn, x, cfg, device, iters)
            row = {"device": str(device), "batch": n, "size": args.size, "method": name, "ms_per_batch": ms,
                   "crops_per_s": n / ms * 1000.0}
            rows.append(row)
            print(f"{str(device):<10} {n:>6} {name:<12} {ms:>10.3f} {row['crops_per_s']:>12.0f}")
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "config": cfg.__dict__, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
