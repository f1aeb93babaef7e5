#!/usr/bin/env python3
"""Replay a finished search's learning curves through NNI's Medianstop assessor at several start steps:
how many trials it would have stopped, the training time that saves, and whether it would have
stopped any of the trials that ended in the top K.

The curves come from the run's ``RUN/progress/*.json`` (every epoch of every trial, with the
objective as the trial reported it to NNI), or, for a run whose progress files were not kept, from
the epoch lines of its ``naslung search`` log (``--log``; the objective is then rebuilt from the
printed per-epoch validation metric, with each finished inner fold's last epoch standing in for the
checkpoint the trainer chose). Trials are replayed in the order they finished; a trial is assessed
against the trials that had finished before it started (``--rounds``: the search ran its trials in
waves of ``concurrency``), as NNI's assessor would have seen them.

    python bench/assessor_replay.py --run runs/search-voi
    python bench/assessor_replay.py --log docs/measurements/2026-12-04b/search_voi.log --objective auc \\
        --concurrency 16 --json docs/measurements/2026-12-04b/assessor_replay.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPOCH = re.compile(r"trial (\d+) (\S+)\s+(?:\[inner (\d+)/(\d+)\] )?epoch (\d+)/(\d+) .*?val acc (\S+) auc (\S+)\s+"
                   r"\(([\d.]+) s\)")
DONE = re.compile(r"\[\s*(\d+)/\d+\] (SUCCEEDED|FAILED|EARLY_STOPPED) (\S+)")


def curves_from_log(path: Path, objective: str) -> tuple[dict[str, dict], list[str]]:
    """{arch: {"values": objective per step, "seconds": per step}} and the archs in finishing order."""
    raw: dict[str, list[tuple[int, int, float, float]]] = {}
    order: list[str] = []
    for line in path.read_text().splitlines():
        m = EPOCH.search(line)
        if m:
            arch, inner = m.group(2), int(m.group(3) or 1) - 1
            metric = m.group(7) if objective == "accuracy" else m.group(8)
            value = float(metric) if metric not in ("-", "nan") else 0.0
            raw.setdefault(arch, []).append((inner, int(m.group(5)), value, float(m.group(9))))
            continue
        d = DONE.search(line)
        if d and d.group(2) == "SUCCEEDED" and d.group(3) not in order:
            order.append(d.group(3))
    curves = {}
    for arch, rows in raw.items():
        finished, values, seconds, last_inner, last_value = [], [], [], 0, 0.0
        for inner, _, value, sec in rows:
            if inner != last_inner:
                finished.append(last_value)
                last_inner = inner
            values.append((sum(finished) + value) / (len(finished) + 1))
            seconds.append(sec)
            last_value = value
        curves[arch] = {"values": values, "seconds": seconds}
    return curves, [a for a in order if a in curves]


def curves_from_run(run: Path) -> tuple[dict[str, dict], list[str]]:
    curves, ends = {}, []
    for p in sorted((run / "progress").glob("*.json")):
        st = json.loads(p.read_text())
        hist = st.get("history", [])
        key = f"{st.get('seq')}:{st.get('arch')}"
        curves[key] = {"values": [float(h.get("objective") or 0.0) for h in hist],
                       "seconds": [float(h.get("seconds") or 0.0) for h in hist]}
        ends.append((p.stat().st_mtime, key))
    return curves, [k for _, k in sorted(ends)]


def replay(curves: dict[str, dict], order: list[str], start_step: int, concurrency: int, top_k: int) -> dict:
    from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
    from nni.assessor import AssessResult

    finals = {a: max(curves[a]["values"]) if curves[a]["values"] else 0.0 for a in order}
    top = set(sorted(order, key=lambda a: -finals[a])[:top_k])
    stopped, saved, spent = [], 0.0, sum(sum(curves[a]["seconds"]) for a in order)
    for wave_start in range(0, len(order), concurrency):
        references = order[:wave_start]
        assessor = MedianstopAssessor(optimize_mode="maximize", start_step=start_step)
        for ref in references:
            assessor.assess_trial(ref, curves[ref]["values"])
            assessor.trial_end(ref, True)
        for arch in order[wave_start:wave_start + concurrency]:
            values, secs = curves[arch]["values"], curves[arch]["seconds"]
            for step in range(1, len(values)):
                if assessor.assess_trial(arch, values[:step]) is AssessResult.Bad:
                    stopped.append({"arch": arch, "step": step, "steps": len(values), "in_top": arch in top})
                    saved += sum(secs[step:])
                    break
    return {"start_step": start_step, "trials": len(order), "assessable": max(len(order) - concurrency, 0),
            "stopped": len(stopped), "stopped_in_top": sum(s["in_top"] for s in stopped),
            "seconds_saved": round(saved, 1), "seconds_spent": round(spent, 1),
            "saved_fraction": round(saved / spent, 4) if spent else None, "stops": stopped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="search run directory with progress/*.json")
    src.add_argument("--log", type=Path, help="a `naslung search` log (when progress files were not kept)")
    p.add_argument("--objective", choices=("accuracy", "auc"), default="auc", help="--log: the search objective")
    p.add_argument("--concurrency", type=int, default=16, help="trials that ran at once (the waves)")
    p.add_argument("--start-steps", type=int, nargs="+", default=[1, 5, 10, 20, 30])
    p.add_argument("--top", type=int, default=8, help="count stopped trials among the final top K")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    curves, order = curves_from_run(args.run) if args.run else curves_from_log(args.log, args.objective)
    rows = [replay(curves, order, s, args.concurrency, args.top) for s in args.start_steps]
    print(f"{len(order)} finished trials, waves of {args.concurrency}; Medianstop replayed")
    print(f"{'start step':>10} {'assessable':>10} {'stopped':>8} {'of top ' + str(args.top):>9} "
          f"{'saved s':>9} {'of spent':>9}")
    for r in rows:
        print(f"{r['start_step']:>10} {r['assessable']:>10} {r['stopped']:>8} {r['stopped_in_top']:>9} "
              f"{r['seconds_saved']:>9.0f} {100 * (r['saved_fraction'] or 0):>8.1f}%")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
