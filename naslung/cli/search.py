"""``naslung search``: NNI architecture search over the NAS-Lung space -> a search run directory.

Writes RUN/trials.csv (every trial: validation accuracy/AUC, params, FLOPs, latency), RUN/pareto.csv
and RUN/pareto.png (accuracy vs latency), RUN/top/<rank>.json (ModelConfigs for `naslung train --config`
and `naslung ensemble`), RUN/pruned.csv (partial-order pruning), RUN/summary.json, and NNI's own files
under RUN/nni-experiments/. The test fold is never evaluated during the search.

NNI's manager (web UI + REST API) listens on ALL interfaces without authentication.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung search --data runs/data --config examples/search_naslung.yml --out runs/search
  naslung search --data runs/data --config examples/search_naslung.yml --max-trials 20 \\
      --trial-concurrency 4 --gpus 0 --trials-per-gpu 4 --port 8080 --out runs/search-gpu
  naslung search --data runs/data --config examples/search_naslung.yml --resume k3x9a1bz --out runs/search
  # real CT on a GPU: 3 inner folds per trial, 16 trials per GPU, NNI's Medianstop early stopping
  naslung search --data runs/voi5_fov --config examples/search_lidc_voi.yml --out runs/search-voi
  naslung search --data runs/data --config examples/search_naslung.yml --gpus 0,1 --trials-per-gpu 4 \
      --out runs/search-2gpu                          # 8 trials at once: 4 on GPU 0, 4 on GPU 1
  naslung search --data /shared/data --config examples/search_naslung.yml --platform remote \
      --hosts examples/hosts.yml --manager-ip 10.0.0.1 --out /shared/runs/search   # trials on SSH hosts
  naslung search --report-only --out runs/search      # rebuild CSVs, plot and top configs from disk
  naslung search --data runs/data --config examples/search_naslung.yml --hpo small --tuner TPE \
      --max-trials 20 --out runs/hpo-small                # tune lr, batch size, margin, epochs

the same search with NNI's own tool (trial command: python -m search_spaces.trial):
  nnictl create --config examples/search.yml --port 8080
  nnictl create --config examples/search_remote.yml --port 8080          # trials on SSH hosts
  nnictl create --config examples/k8s/search-frameworkcontroller.yml    # trials as Kubernetes pods

scale-out (remote hosts, several GPUs, Kubernetes): docs/scale-out.md
"""


def _gpus(text: str) -> list[int]:
    try:
        return [int(g) for g in text.split(",") if g.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes comma-separated GPU indices such as 0,1; got {text!r}")


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("search", help="NNI architecture search with a Pareto front of accuracy vs latency",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--data", help="prepared dataset directory (from `naslung prepare`)")
    p.add_argument("--config", help="search YAML (space, strategy, trial, experiment); "
                                    "see examples/search_naslung.yml")
    p.add_argument("--out", required=True, help="search run directory")
    p.add_argument("--strategy", choices=("pop", "random", "evolution"), default=None,
                   help="partial-order pruning, random, regularized evolution (default: the config's strategy.name)")
    p.add_argument("--max-trials", type=int, default=None, help="trials in the search (default: the config's experiment.max_trials)")
    p.add_argument("--trial-concurrency", type=int, default=None,
                   help="trials running at once; at most the slots (GPUs x trials per GPU, or the hosts' slots) "
                        "(default: the config's experiment.trial_concurrency, else every slot, else 1)")
    p.add_argument("--gpus", type=_gpus, default=None,
                   help="local GPU indices trials are spread over, e.g. 0 or 0,1 (default: CPU)")
    p.add_argument("--trials-per-gpu", type=int, default=None,
                   help="trials sharing one GPU at once (default: the config's experiment.trials_per_gpu)")
    p.add_argument("--platform", choices=("local", "remote"), default=None,
                   help="where NNI runs trials: this machine, or SSH hosts from --hosts (default: the config's "
                        "experiment.platform, else local)")
    p.add_argument("--hosts", metavar="HOSTS_YML", default=None,
                   help="SSH hosts for --platform remote: host, port, user, key_file, python, gpus, trials_per_gpu "
                        "(examples/hosts.yml; docs/scale-out.md)")
    p.add_argument("--manager-ip", default=None,
                   help="address the remote hosts reach NNI's manager at (default: the config's "
                        "experiment.manager_ip, else NNI's guess of this machine's address)")
    p.add_argument("--port", type=int, default=None, help="NNI manager / web UI port, 0 = any free port (default: the config's experiment.port)")
    p.add_argument("--resume", metavar="EXP_ID", default=None, help="resume a stopped experiment with this id")
    p.add_argument("--hpo", metavar="MODEL", default=None,
                   help="instead of searching architectures, tune lr, batch size, margin and epochs of MODEL "
                        "(registry name or ModelConfig JSON) with NNI's Experiment API")
    p.add_argument("--tuner", choices=("TPE", "Evolution", "Random"), default="TPE", help="--hpo: NNI tuner")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from RUN/trials/")
    p.add_argument("--debug", action="store_true", help="NNI debug logging")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.report_only:
        import sys

        from search_spaces.report import rebuild_report

        summary = rebuild_report(args.out)
        _print_summary(summary, Path(args.out))
        if summary["succeeded"] == 0:
            print(f"naslung search: no trial in {args.out} succeeded; see the errors in {Path(args.out) / 'trials.csv'}",
                  file=sys.stderr)
            return 1
        return 0
    if not args.data or not args.config:
        raise ValueError("--data and --config are required (unless --report-only)")

    from search_spaces.experiment import SearchConfig, run_search
    from search_spaces.nni_api import NNIUnavailable

    cfg = SearchConfig.from_file(args.config)
    ex = cfg.experiment
    for flag, attr in (("max_trials", "max_trials"), ("trial_concurrency", "trial_concurrency"),
                       ("gpus", "gpus"), ("trials_per_gpu", "trials_per_gpu"), ("port", "port"),
                       ("platform", "platform"), ("hosts", "hosts"), ("manager_ip", "manager_ip")):
        value = getattr(args, flag)
        if value is not None:
            setattr(ex, attr, value)
    if args.strategy:
        cfg.strategy.name = args.strategy
    if ex.max_trials < 1 or (ex.trial_concurrency is not None and ex.trial_concurrency < 1) or ex.trials_per_gpu < 1:
        raise ValueError("--max-trials, --trial-concurrency and --trials-per-gpu must be >= 1")
    if ex.hosts and ex.platform != "remote":
        raise ValueError("--hosts is for --platform remote (the trials run on those hosts)")
    if ex.platform == "remote" and not ex.hosts:
        raise ValueError("--platform remote needs --hosts hosts.yml (format: examples/hosts.yml)")
    if args.hpo and ex.platform != "local":
        raise ValueError("--hpo runs on the local platform only; for remote HPO use nnictl with "
                         "examples/search_remote.yml as a template")
    try:
        if args.hpo:
            from naslung.models import resolve_config
            from search_spaces.hpo import run_hpo

            summary = run_hpo(resolve_config(args.hpo), {"trial": cfg.trial, "space": cfg.space}, args.data,
                              args.out, tuner=args.tuner, max_trials=ex.max_trials,
                              concurrency=ex.trial_concurrency or 1, port=ex.port,
                              printer=lambda s: print(s, flush=True))
        else:
            summary = run_search(cfg, args.data, args.out, resume=args.resume, debug=args.debug,
                                 printer=lambda s: print(s, flush=True))
    except (NNIUnavailable, RuntimeError) as e:
        raise ValueError(str(e)) from None
    _print_summary(summary, Path(args.out))
    if summary.get("interrupted"):
        return 130
    return 0 if summary["succeeded"] > 0 else 1


def _print_summary(summary: dict, out) -> None:
    print(f"\n{summary['trials']} trials ({summary['succeeded']} succeeded, {summary['failed']} failed), "
          f"{summary['pareto']} on the Pareto front" +
          (f", {summary['pruned']} candidates pruned" if summary.get("pruned") else "") +
          (f"; {summary['trials_per_hour']} trials/hour" if summary.get("trials_per_hour") else ""))
    for name in ("trials.csv", "pareto.csv", "pareto.png", "top"):
        if (out / name).exists():
            print(f"  {out / name}")
