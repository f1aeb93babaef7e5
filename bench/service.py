"""Load test of the gRPC service on loopback: throughput, latency percentiles, errors, server RSS.

Starts ``naslung`` serving in a child process (so its resident memory is its own and client threads
do not share its GIL), then for each concurrency level runs N closed-loop clients (each sends a
Predict, waits for the answer, sends the next) for ``--duration`` seconds after ``--warmup``.

    python bench/service.py --models model1,model1,model1,model1,model1 --concurrency 1,8,64 \\
        --duration 10 --out bench-service.json                           # CPU
    python bench/service.py --device cuda --max-batch 64 --concurrency 1,64 --client-procs 4 \\
        --duration 20 --out bench-service-h100.json                      # GPU
    python bench/service.py --concurrency 8 --duration 600 --rss-interval 10   # 10-minute soak
    python bench/service.py --models null --concurrency 64 --client-procs 4    # server ceiling, no model

Needs only torch, numpy, grpcio and protobuf. No protobuf on the box? Carry this repo's
``.venv/lib/python3.11/site-packages/google`` (pure Python + an abi3 extension, so any CPython >= 3.9
can use it) and run with ``PYTHONPATH=.venv/lib/python3.11/site-packages``. Health checks,
reflection, Prometheus and SimpleITK are optional for the server and unused here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# This file is called service.py: keep bench/ off sys.path so `import service` finds the package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if p and Path(p).resolve() != HERE]

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------------------- server side
def build_predictor(args: argparse.Namespace):
    """The server's predictor (module level: every server process builds its own)."""
    import logging

    from naslung.cli.serve import make_predictor

    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    if args.models == "null" and not args.bundle:
        return NullPredictor()
    return make_predictor(args.bundle, None if args.bundle else args.models, args.device, args.engine,
                          args.max_batch, args.precision, args.threads)


def serve_main(args: argparse.Namespace) -> int:
    """Child process: load the predictor, serve (``--server-procs`` processes), print the port, drain on SIGTERM."""
    import functools

    from service.procs import serve_processes
    from service.server import ServerConfig

    pred = build_predictor(args) if args.server_procs == 1 else None
    cfg = ServerConfig(port=0, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                       workers=args.workers)

    def ready(server):
        probe = pred or NullPredictor()
        dtype = getattr(getattr(pred, "runner", None), "dtype", None)
        print(json.dumps({"port": server.port, "size": probe.spec.size,
                          "members": len(probe.member_names) if pred else None,
                          "engine": pred.engine if pred else f"{args.engine} x{args.server_procs} procs",
                          "dtype": str(dtype).replace("torch.", "") if dtype else None,
                          "version": pred.version if pred else None}), flush=True)

    factory = (lambda: pred) if pred is not None else functools.partial(build_predictor, args)
    return serve_processes(factory, cfg, args.server_procs, on_ready=ready)


class NullPredictor:
    """No model: answers 0.5 at once. Measures the server's own ceiling (gRPC, validation, batching)."""

    engine = "null"
    version = "null"
    threshold = 0.5
    member_names = [f"null-{i}" for i in range(5)]

    def __init__(self) -> None:
        from naslung.data.spec import CropSpec

        self.spec = CropSpec(size=32)
        self.lock = threading.RLock()

    def info(self) -> dict:
        return {"version": self.version, "members": [{"name": n} for n in self.member_names]}

    def predict(self, crops):
        from service.predictor import BatchPrediction

        p = np.full((len(crops), 2), 0.5, np.float32)
        return BatchPrediction(p, np.stack([p] * len(self.member_names)))


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--device", args.device, "--engine", args.engine,
           "--precision", args.precision, "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms),
           "--max-queue", str(args.max_queue), "--workers", str(args.workers), "--server-procs", str(args.server_procs)]
    cmd += ["--bundle", args.bundle] if args.bundle else ["--models", args.models]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
    return proc, json.loads(line)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def rss_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory, MiB, summed over the server's process tree (Linux)."""
    out: dict[str, float] = {}
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = out.get(key, 0.0) + int(val.split()[0]) / 1024
        except OSError:
            pass
    return out


# ----------------------------------------------------------------------------------- client side
def _stub(target: str):
    import grpc

    from service.generated import nodule_service_pb2 as pb

    # a connection of its own (no subchannel shared between a process's channels), so with several
    # server processes the kernel spreads the clients over them
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                     ("grpc.use_local_subchannel_pool", 1)])
    predict = channel.unary_unary("/naslung.v1.NoduleService/Predict",
                                  request_serializer=pb.PredictRequest.SerializeToString,
                                  response_deserializer=pb.PredictResponse.FromString)
    return channel, predict


def _requests(size: int, n: int = 32, seed: int = 0):
    from service.generated import nodule_service_pb2 as pb

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hu = rng.normal(-600, 300, (size, size, size)).clip(-1024, 3000).astype("<i2")
        out.append(pb.PredictRequest(request_id=f"bench-{i}", crop=pb.Crop(voxels=pb.Array3D(
            shape=[size] * 3, dtype=pb.DTYPE_INT16, data=hu.tobytes()))))
    return out


def client_worker(target: str, size: int, n_threads: int, t_start: float, t_end: float, timeout: float,
                  seed: int) -> dict:
    """Run ``n_threads`` closed-loop clients between two wall-clock times; latencies of OK calls in ms."""
    import grpc

    reqs = _requests(size, seed=seed)
    lat: list[list[float]] = [[] for _ in range(n_threads)]
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def loop(k: int) -> None:
        channel, predict = _stub(target)  # one channel (HTTP/2 connection) per client
        i = k
        while time.time() < t_start:
            time.sleep(0.001)
        while True:
            t0 = time.time()
            if t0 >= t_end:
                break
            try:
                predict(reqs[i % len(reqs)], timeout=timeout)
                lat[k].append((time.time() - t0) * 1e3)
            except grpc.RpcError as e:
                with lock:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
            i += 1
        channel.close()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies_ms": [x for xs in lat for x in xs], "errors": errors}


def _proc_entry(q, *a) -> None:
    q.put(client_worker(*a))


def run_level(target: str, size: int, concurrency: int, procs: int, warmup: float, duration: float,
              timeout: float, server_pid: int, rss_interval: float) -> dict:
    import multiprocessing as mp

    procs = max(1, min(procs, concurrency))
    split = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    t_start = time.time() + warmup + (1.0 if procs > 1 else 0.0)
    t_end = t_start + duration
    # warm-up: the same clients run from now until t_start; their calls are not counted
    warm = threading.Thread(target=client_worker, args=(target, size, concurrency, time.time(), t_start, timeout, 99))
    warm.start()
    results = []
    if procs == 1:
        holder = {}
        t = threading.Thread(target=lambda: holder.setdefault("r", client_worker(
            target, size, concurrency, t_start, t_end, timeout, 0)))
        t.start()
        timeline = _sample_rss(server_pid, t_end, rss_interval)
        t.join()
        results.append(holder["r"])
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ps = [ctx.Process(target=_proc_entry, args=(q, target, size, n, t_start, t_end, timeout, i))
              for i, n in enumerate(split)]
        for p in ps:
            p.start()
        timeline = _sample_rss(server_pid, t_end, rss_interval)
        results = [q.get() for _ in ps]
        for p in ps:
            p.join()
    warm.join()
    lat = np.asarray([x for r in results for x in r["latencies_ms"]], dtype=np.float64)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    row = {"concurrency": concurrency, "client_procs": procs, "duration_s": duration, "ok": int(lat.size),
           "errors": errors, "throughput_per_s": lat.size / duration}
    for q_ in (50, 95, 99):
        row[f"p{q_}_ms"] = float(np.percentile(lat, q_)) if lat.size else float("nan")
    row["mean_ms"] = float(lat.mean()) if lat.size else float("nan")
    mem = rss_mb(server_pid)
    row["server_rss_mb"], row["server_peak_rss_mb"] = mem.get("VmRSS"), mem.get("VmHWM")
    if timeline:
        row["rss_timeline_mb"] = timeline
    return row


def _sample_rss(pid: int, t_end: float, interval: float) -> list[tuple[float, float]]:
    out = []
    t0 = time.time()
    while interval > 0 and time.time() < t_end:
        out.append((round(time.time() - t0, 1), rss_mb(pid).get("VmRSS", float("nan"))))
        time.sleep(min(interval, max(0.0, t_end - time.time())))
    while time.time() < t_end:
        time.sleep(0.05)
    return out


def machine_info(device: str) -> dict:
    import grpc
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "grpcio": grpc.__version__, "device": device}
    try:
        info["cpu_model"] = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                                 if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def check_imports() -> str | None:
    """Why the generated protobuf code cannot be imported here, or None."""
    try:
        import grpc  # noqa: F401

        from service.generated import nodule_service_pb2  # noqa: F401
    except Exception as e:  # ImportError, protobuf VersionError, ...
        return (f"cannot import the service's protobuf code ({type(e).__name__}: {e}).\n"
                "This needs grpcio and protobuf >= 7.35 (the version that generated service/generated/). "
                "On a box without it, carry this repo's .venv/lib/python3.11/site-packages/google and run with "
                "PYTHONPATH=.venv/lib/python3.11/site-packages")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle to serve (default: untrained --models)")
    p.add_argument("--models", default="model1,model1,model1,model1,model1",
                   help="comma-separated registry models with random weights (a 5-member ensemble by default); "
                        "'null' = no model, to measure the server's own ceiling")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--engine", default="auto", choices=("auto", "naive", "fast"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="fast-engine arithmetic (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--workers", type=int, default=128, help="server RPC threads")
    p.add_argument("--threads", type=int, default=None, help="server torch CPU threads")
    p.add_argument("--server-procs", type=int, default=1,
                   help="server processes sharing the port (naslung serve --procs)")
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated numbers of concurrent clients")
    p.add_argument("--client-procs", type=int, default=1, help="client processes per level (GIL relief)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--timeout", type=float, default=30.0, help="client deadline per call (s)")
    p.add_argument("--rss-interval", type=float, default=0.0, help="sample server RSS every S seconds (soak)")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problem = check_imports()
    if problem:
        print(f"bench/service.py: {problem}", file=sys.stderr)
        return 2
    if args.serve:
        return serve_main(args)

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    proc, ready = start_server(args)
    target = f"127.0.0.1:{ready['port']}"
    rows = []
    try:
        rss_idle = rss_mb(proc.pid)
        print(f"server pid {proc.pid} on {target}: {ready['members']} member(s), {ready['size']}^3 crops, "
              f"engine {ready['engine']}, idle RSS {rss_idle.get('VmRSS', float('nan')):.0f} MiB", flush=True)
        for c in levels:
            rows.append(run_level(target, ready["size"], c, args.client_procs, args.warmup, args.duration,
                                  args.timeout, proc.pid, args.rss_interval))
            r = rows[-1]
            print(f"  c={c:<4d} {r['throughput_per_s']:8.1f}/s  p50 {r['p50_ms']:7.1f}  p95 {r['p95_ms']:7.1f}  "
                  f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors'] or 0}  RSS {r['server_rss_mb']:.0f} MiB", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    header = f"{'clients':>7} {'pred/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>8} {'RSS MiB':>8} {'peak':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['concurrency']:>7} {r['throughput_per_s']:>9.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {sum(r['errors'].values()):>8} {r['server_rss_mb']:>8.0f} "
              f"{r['server_peak_rss_mb']:>6.0f}")
    result = {"bench": "service", "machine": machine_info(args.device), "server": {
        "bundle": args.bundle, "models": None if args.bundle else args.models, "members": ready["members"],
        "crop_size": ready["size"], "engine": ready["engine"], "dtype": ready.get("dtype"),
        "precision": args.precision, "max_batch": args.max_batch,
        "max_delay_ms": args.max_delay_ms, "workers": args.workers, "threads": args.threads,
        "server_procs": args.server_procs,
        "idle_rss_mb": rss_idle.get("VmRSS")}, "levels": rows,
        "server_exit_code": proc.returncode}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
