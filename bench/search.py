#!/usr/bin/env python3
"""Throughput of the NNI architecture search: trials/hour and GPU utilisation for an N-trial search.

It runs the real thing -- ``search_spaces.experiment.run_search``: NNI manager, local training
service, one process per trial, several trials sharing a GPU -- on a prepared dataset (made here
from the embedded lidc-shapes data with ``--prepare``), samples ``nvidia-smi`` while it runs, prints
a table and writes JSON. Works with ``--device cpu`` too (no GPU sampling then).

On the GPU box (python3.12 + torch; NNI and its missing dependencies carried as wheels, see
docs/search.md), from the repository root::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    python3 bench/search.py --prepare lidc-shapes --data /tmp/nl-data --out /tmp/nl-search \\
        --trials 20 --concurrency 4 --gpus 0 --trials-per-gpu 4 --device cuda --json $OUT/bench_search.json

On CPU (this repository's CI machine)::

    .venv/bin/python bench/search.py --prepare lidc-shapes --limit 200 --data /tmp/nl-data \\
        --out /tmp/nl-search --trials 2 --concurrency 2 --device cpu --epochs 1 --json /tmp/bench_search.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class GpuSampler(threading.Thread):
    """Polls nvidia-smi: utilisation and memory per GPU, and how many processes hold each GPU."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[dict] = []
        self.stop_event = threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def sample(self) -> None:
        q = subprocess.run(["nvidia-smi", "--query-gpu=index,name,utilization.gpu,memory.used,memory.total,uuid",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
        app_gpus = [line.split(",")[1].strip() for line in apps.stdout.splitlines() if line.count(",") >= 1]
        n_procs = len(app_gpus)
        t = time.time()
        for line in q.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 6:
                self.samples.append({"t": t, "gpu": int(parts[0]), "name": parts[1], "util": float(parts[2]),
                                     "mem_mib": float(parts[3]), "mem_total_mib": float(parts[4]),
                                     "procs": n_procs, "gpu_procs": app_gpus.count(parts[5])})

    def run(self) -> None:
        while self.available and not self.stop_event.is_set():
            try:
                self.sample()
            except (OSError, subprocess.SubprocessError):
                pass
            self.stop_event.wait(self.interval)


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {"mean": round(statistics.fmean(v), 2), "median": round(statistics.median(v), 2),
            "p90": round(v[int(0.9 * (len(v) - 1))], 2), "max": round(v[-1], 2)}


def prepare(source: str, data: Path, limit: int | None, folds: int) -> None:
    from naslung.data.prepare import prepare_dataset
    from naslung.data.sources.base import SourceOptions

    t0 = time.time()
    ds = prepare_dataset(source, SourceOptions(limit=limit, progress=False), folds=folds)
    ds.save(data)
    print(f"prepared {source}: {len(ds)} crops in {time.time() - t0:.1f}s -> {data}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared dataset dir (created with --prepare when absent)")
    p.add_argument("--prepare", choices=("lidc-shapes",), default=None, help="prepare this source into --data")
    p.add_argument("--limit", type=int, default=None, help="--prepare: only the first N items")
    p.add_argument("--folds", type=int, default=5, help="--prepare: patient-grouped folds")
    p.add_argument("--config", default=str(ROOT / "examples" / "search_naslung.yml"), help="search YAML")
    p.add_argument("--out", required=True, help="search run dir (emptied first)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--gpus", default=None, help="GPU indices for trials, e.g. 0")
    p.add_argument("--trials-per-gpu", type=int, default=4)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--epochs", type=int, default=None, help="override trial.train.epochs")
    p.add_argument("--strategy", default=None, choices=("pop", "random", "evolution"))
    p.add_argument("--port", type=int, default=0, help="NNI port (0 = free port)")
    p.add_argument("--interval", type=float, default=1.0, help="nvidia-smi sampling interval (s)")
    p.add_argument("--json", default=None, help="also write the result JSON here")
    args = p.parse_args(argv)

    import torch

    from search_spaces.experiment import SearchConfig, run_search

    data, out = Path(args.data), Path(args.out)
    if not (data / "dataset.json").is_file():
        if not args.prepare:
            raise SystemExit(f"{data} is not a prepared dataset; pass --prepare lidc-shapes")
        prepare(args.prepare, data, args.limit, args.folds)
    if out.exists():
        shutil.rmtree(out)
    cfg = SearchConfig.from_file(args.config)
    ex = cfg.experiment
    ex.max_trials, ex.trial_concurrency, ex.port = args.trials, args.concurrency, args.port
    ex.gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    ex.trials_per_gpu = args.trials_per_gpu
    cfg.trial["device"] = args.device
    if args.device == "cpu":
        cfg.trial["threads"] = 1
    if args.epochs is not None:
        cfg.trial.setdefault("train", {})["epochs"] = args.epochs
    if args.strategy:
        cfg.strategy.name = args.strategy
    if args.device == "cuda" and not ex.gpus:
        raise SystemExit("--device cuda needs --gpus (NNI hides GPUs from trials that were given none)")

    sampler = GpuSampler(args.interval)
    sampler.start()
    t0 = time.time()
    try:
        summary = run_search(cfg, data, out, printer=lambda s: print(s, flush=True))
    finally:
        sampler.stop_event.set()
        sampler.join(timeout=5)
    wall = time.time() - t0

    from search_spaces.report import load_records

    records = load_records(out)
    ok = [r for r in records if r.get("status") == "SUCCEEDED"]
    trial_s = [float(r["trial_seconds"]) for r in ok if r.get("trial_seconds") is not None]
    train_s = [float(r["train_seconds"]) for r in ok if r.get("train_seconds") is not None]
    gpu = {}
    if sampler.samples:
        busy = [s for s in sampler.samples if s["procs"] > 0]
        gpu = {
            "name": sampler.samples[0]["name"],
            "samples": len(sampler.samples),
            "util_percent_all": _stats([s["util"] for s in sampler.samples]),
            "util_percent_while_trials_ran": _stats([s["util"] for s in busy]),
            "memory_used_mib": _stats([s["mem_mib"] for s in sampler.samples]),
            "max_concurrent_gpu_processes": max(s["procs"] for s in sampler.samples),
            "mean_concurrent_gpu_processes": round(statistics.fmean(s["procs"] for s in sampler.samples), 2),
            # per GPU: are the trials spread over every GPU the search was given?
            "per_gpu": {str(g): {"util_percent_while_trials_ran": _stats([s["util"] for s in busy if s["gpu"] == g]),
                                 "max_processes": max(s["gpu_procs"] for s in sampler.samples if s["gpu"] == g),
                                 "mean_processes": round(statistics.fmean(
                                     s["gpu_procs"] for s in sampler.samples if s["gpu"] == g), 2)}
                        for g in sorted({s["gpu"] for s in sampler.samples})},
        }
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "cpu_count": __import__("os").cpu_count()},
        "settings": {"trials": args.trials, "concurrency": args.concurrency, "gpus": ex.gpus,
                     "trials_per_gpu": args.trials_per_gpu, "device": args.device, "strategy": cfg.strategy.name,
                     "epochs": cfg.trial.get("train", {}).get("epochs"), "data": str(data)},
        "wall_seconds": round(wall, 1),
        "trials_finished": len(records),
        "trials_succeeded": len(ok),
        "trials_per_hour": round(len(records) / (wall / 3600), 2),
        "trial_seconds": _stats(trial_s),
        "train_seconds": _stats(train_s),
        "overhead_seconds_per_trial": _stats([a - b for a, b in zip(trial_s, train_s)]),
        "pareto": summary.get("pareto"),
        "pruned": summary.get("pruned"),
        "gpu": gpu,
        "search_summary": summary,
    }
    rows = [("trials (succeeded/finished)", f"{len(ok)}/{len(records)}"), ("wall (s)", f"{wall:.1f}"),
            ("trials/hour", f"{result['trials_per_hour']}"),
            ("trial s (median)", f"{result['trial_seconds'].get('median', '-')}"),
            ("in-trial overhead s (median)", f"{result['overhead_seconds_per_trial'].get('median', '-')}")]
    if gpu:
        rows += [("GPU", gpu["name"]),
                 ("GPU util % mean/median/p90 (trials running)",
                  "/".join(str(gpu["util_percent_while_trials_ran"].get(k, "-")) for k in ("mean", "median", "p90"))),
                 ("GPU processes max/mean", f"{gpu['max_concurrent_gpu_processes']}/"
                                            f"{gpu['mean_concurrent_gpu_processes']}"),
                 ("GPU memory MiB max", f"{gpu['memory_used_mib'].get('max', '-')}")]
        rows += [(f"GPU {g}: processes max/mean, util % mean", f"{v['max_processes']}/{v['mean_processes']}, "
                  f"{v['util_percent_while_trials_ran'].get('mean', '-')}") for g, v in gpu["per_gpu"].items()]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    text = json.dumps(result, indent=2, default=str)
    (out / "bench_search.json").write_text(text + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
