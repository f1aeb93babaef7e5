"""``naslung profile``: parameters, FLOPs and measured inference latency of model configs."""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung profile --model small
  naslung profile --model tiny --model small --model model1 --device cpu --batch-size 8
  naslung profile --config runs/train/fold_0/checkpoint.json --device cuda

FLOPs count a multiply-accumulate as 2 (convolutions, linear layers and the head only);
latency is the median of --repeats forward passes after warm-up (CUDA-synchronised on GPU).
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="parameters, FLOPs and latency of model configs",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--model", action="append", default=None, help="registered model name (repeatable)")
    p.add_argument("--config", action="append", default=None, help="model config JSON (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--input-size", type=int, default=None, help="crop edge (default: the config's in_size)")
    p.add_argument("--batch-size", type=int, default=1, help="crops per timed forward pass")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes (the median is reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed forward passes first")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from naslung.models import get_config, resolve_config
    from naslung.models.profile import profile_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cfgs = [(n, get_config(n)) for n in (args.model or [])]
    cfgs += [(c, resolve_config(c)) for c in (args.config or [])]
    if not cfgs:
        cfgs = [("small", get_config("small"))]
    rows = []
    print(f"{'model':<16} {'params':>10} {'MFLOPs':>10} {'latency ms':>11}  device, input, batch")
    for name, cfg in cfgs:
        r = profile_model(cfg, args.device, args.input_size, batch_size=args.batch_size, warmup=args.warmup,
                          repeats=args.repeats)
        r["model"] = name
        r["config"] = cfg.to_dict()
        rows.append(r)
        print(f"{name:<16} {r['params']:>10,} {r['flops'] / 1e6:>10.1f} {r['latency_ms']:>11.2f}  "
              f"{r['device']}, {r['input_size']}^3, {r['batch_size']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0
