#!/usr/bin/env python3
"""Training throughput (crops/s) of naslung models: forward + backward + optimizer step, with the
batched on-device augmentation included, on CPU and CUDA (bf16 autocast).

Runs from the repository root with only torch and numpy installed::

    python bench/train_throughput.py --device cpu --out cpu.json
    python bench/train_throughput.py --device cuda --models small,naslung-ref --batch-size 64 --out gpu.json

Data are random HU crops uploaded once and normalised on the device (what the trainer does), so
the number measures the model + augmentation + optimizer, not disk or a data loader.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from naslung.data.augment import AugmentConfig, BatchAugmenter  # noqa: E402
from naslung.data.spec import CropSpec  # noqa: E402
from naslung.models import build_model, count_params, get_config  # noqa: E402
from naslung.models.profile import count_macs  # noqa: E402
from naslung.train.config import TrainConfig  # noqa: E402
from naslung.train.data import DeviceData  # noqa: E402
from naslung.train.trainer import make_optimizer, train_step  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(model_name: str, device: str, batch_size: int, size: int, steps: int, warmup: int,
              amp: bool, augment: bool, n_data: int = 256) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    cfg = get_config(model_name)
    spec = CropSpec(size=size)
    rng = np.random.default_rng(0)
    crops = rng.integers(-1000, 400, size=(n_data, size, size, size), dtype=np.int16)
    labels = np.arange(n_data) % 2
    data = DeviceData.from_arrays(crops, labels, spec, dev)
    model = build_model(cfg).to(dev).train()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    opt = make_optimizer(model, TrainConfig())
    aug = BatchAugmenter(AugmentConfig(), seed=0) if augment else None
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, n_data, (batch_size,), generator=gen).to(dev)
        sync(dev)
        t0 = time.perf_counter()
        x, y = data.x[idx], data.y[idx]
        if aug is not None:
            x = aug(x)
        train_step(model, opt, x, y, step=i, amp=amp)
        sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "model": model_name,
        "params": count_params(model),
        "gflops_per_crop_fwd": 2 * count_macs(model, size, dev) / 1e9,
        "device": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "amp_bf16": bool(amp and dev.type == "cuda"),
        "augment": augment,
        "batch_size": batch_size,
        "crop": size,
        "steps": steps,
        "median_step_s": med,
        "crops_per_s": batch_size / med,
        "crops_per_s_mean": batch_size * len(times) / sum(times),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None,
                   help="comma list of devices (default: cpu, plus cuda when available)")
    p.add_argument("--models", default="model1,naslung-ref", help="comma list of registered model names")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="crop edge in voxels")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 cuda, 5 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 10 cuda, 2 cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA instead of bf16 autocast")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device.split(",") if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    print(f"{'model':<13} {'params':>9} {'GFLOP/crop':>10} {'device':<22} {'bf16':>4} {'batch':>5} "
          f"{'step ms':>9} {'crops/s':>9}")
    for device in devices:
        cuda = device.startswith("cuda")
        steps = args.steps or (20 if cuda else 5)
        warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
        for name in args.models.split(","):
            r = bench_one(name, device, args.batch_size, args.size, steps, warmup, amp=not args.no_amp,
                          augment=not args.no_augment)
            rows.append(r)
            dname = r["device_name"] if cuda else f"cpu x{r['threads']}"
            print(f"{name:<13} {r['params']:>9,} {r['gflops_per_crop_fwd']:>10.3f} {dname[:22]:<22} "
                  f"{'yes' if r['amp_bf16'] else 'no':>4} {r['batch_size']:>5} {1000 * r['median_step_s']:>9.1f} "
                  f"{r['crops_per_s']:>9.1f}", flush=True)
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "host_cpus": os.cpu_count(), "results": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
