"""Figures for docs/service.md "Under faults": the memory ceiling under a big-volume mix, and
goodput with 200 ms deadlines on CPU. Bounded in count and time; loopback only.

    python bench/service_faults.py memory --volumes 12 --shape 256,512,512      # 12 max-size volumes at once
    python bench/service_faults.py memory --volumes 6 --stream-clients 6 --per-stream 2  # half on streams
    python bench/service_faults.py deadlines --clients 16 --deadline-ms 200 --duration 20

Each mode starts ``naslung serve --random-models model1`` in a child process (its memory and CPU are
its own) and reads the child's peak RSS (VmHWM) and, for deadlines, its metrics endpoint.
``--pythonpath DIR`` runs the server from another checkout (an older commit, for a before/after).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if p and Path(p).resolve() != HERE]

import grpc  # noqa: E402
import numpy as np  # noqa: E402


def _status_kb(pid: int, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def start_server(args, extra: list[str]) -> tuple[subprocess.Popen, int, int | None]:
    env = dict(os.environ)
    env["PYTHONPATH"] = (args.pythonpath or str(REPO)) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "naslung", "serve", "--random-models", args.models, "--port", "0",
           "--engine", "naive", "--threads", str(args.threads), "--metrics-port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=args.pythonpath or str(REPO))
    port = mport = None
    t_end = time.monotonic() + 180
    while time.monotonic() < t_end and (port is None or mport is None):
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        if m and "serving" in line:
            port = int(m.group(1))
        m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)", line)
        if m:
            mport = int(m.group(1))
    if port is None:
        proc.kill()
        raise RuntimeError("server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain its log
    return proc, port, mport


def metrics(mport: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("naslung_") and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def run_memory(args) -> dict:
    from service.client import NoduleClient, crop_request, volume_request

    z, y, x = (int(v) for v in args.shape.split(","))
    proc, port, mport = start_server(args, ["--max-message-mb", "160"])
    try:
        idle_kb = _status_kb(proc.pid, "VmRSS")
        vol = np.full((z, y, x), -800, np.int16)
        vol[z // 2 - 8:z // 2 + 8, y // 2 - 8:y // 2 + 8, x // 2 - 8:x // 2 + 8] = 40
        req = volume_request(vol, (0.7, 0.7, 1.25), (x * 0.35, y * 0.35, z * 0.625))
        codes: list[str] = []
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.05):
                try:
                    peak[0] = max(peak[0], _status_kb(proc.pid, "VmRSS"))
                except OSError:
                    return

        def one(i: int) -> None:
            with NoduleClient(f"127.0.0.1:{port}", timeout=args.timeout) as c:
                try:
                    c.predict(req)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)

        def streamed(i: int) -> None:  # the same volumes on PredictStream (one stream per client)
            with NoduleClient(f"127.0.0.1:{port}", timeout=args.timeout) as c:
                try:
                    for r in c.predict_stream(iter([req] * args.per_stream)):
                        codes.append("OK" if not r.HasField("error") else f"stream item error {r.error.code}")
                except grpc.RpcError as e:
                    codes.append(e.code().name)

        small: list[str] = []

        def crops() -> None:  # small requests keep coming while the volumes arrive
            with NoduleClient(f"127.0.0.1:{port}", timeout=30) as c:
                while not stop.is_set() and len(small) < 200:
                    try:
                        c.predict(crop_request(np.full((32, 32, 32), -800, np.int16)))
                        small.append("OK")
                    except grpc.RpcError as e:
                        small.append(e.code().name)

        threading.Thread(target=sample, daemon=True).start()
        cth = threading.Thread(target=crops, daemon=True)
        cth.start()
        t0 = time.monotonic()
        for r in range(args.rounds):
            ths = [threading.Thread(target=one, args=(i,)) for i in range(args.volumes)]
            ths += [threading.Thread(target=streamed, args=(i,)) for i in range(args.stream_clients)]
            for t in ths:
                t.start()
            for t in ths:
                t.join(args.timeout + 30)
        wall = time.monotonic() - t0
        stop.set()
        cth.join(30)
        time.sleep(0.2)
        return {"mode": "memory", "shape_zyx": [z, y, x], "volume_mib": vol.nbytes / 2**20,
                "concurrent": args.volumes, "stream_clients": args.stream_clients, "per_stream": args.per_stream,
                "rounds": args.rounds, "codes": {c: codes.count(c) for c in set(codes)},
                "small_crop_codes": {c: small.count(c) for c in set(small)}, "seconds": round(wall, 1),
                "server_idle_rss_mib": round(idle_kb / 1024), "server_peak_rss_mib_sampled": round(peak[0] / 1024),
                "server_vmhwm_mib": round(_status_kb(proc.pid, "VmHWM") / 1024)}
    finally:
        proc.terminate()
        proc.wait(60)


def run_deadlines(args) -> dict:
    from service.client import NoduleClient, crop_request

    proc, port, mport = start_server(args, ["--max-batch", str(args.max_batch)])
    try:
        crop = np.full((32, 32, 32), -800, np.int16)
        with NoduleClient(f"127.0.0.1:{port}", timeout=30) as c:
            for _ in range(3):
                c.predict(crop_request(crop))
        before = metrics(mport)
        codes: list[str] = []
        stop = time.monotonic() + args.duration

        def loop() -> None:
            with NoduleClient(f"127.0.0.1:{port}") as c:
                while time.monotonic() < stop:
                    try:
                        c.predict(crop_request(crop), timeout=args.deadline_ms / 1e3)
                        codes.append("OK")
                    except grpc.RpcError as e:
                        codes.append(e.code().name)
                        time.sleep(0.01)

        ths = [threading.Thread(target=loop) for _ in range(args.clients)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(args.duration + 60)
        time.sleep(1.0)
        after = metrics(mport)
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        run = d.get("naslung_batch_size_sum", 0.0)
        ok = codes.count("OK")
        return {"mode": "deadlines", "clients": args.clients, "deadline_ms": args.deadline_ms,
                "seconds": args.duration, "max_batch": args.max_batch,
                "client_codes": {c: codes.count(c) for c in set(codes)}, "answers_per_s": round(ok / args.duration, 1),
                "crops_run": run, "crops_run_for_nobody": run - ok,
                "server_counted": {k: v for k, v in d.items() if ("requests_total" in k and "Predict" in k)
                                   or "dropped_expired_total" in k or "wasted_crops_total" in k}}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("memory", "deadlines"))
    ap.add_argument("--models", default="model1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pythonpath", default=None, help="run the server from this checkout")
    ap.add_argument("--volumes", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--stream-clients", type=int, default=0,
                    help="memory: this many more clients send the volume on PredictStream")
    ap.add_argument("--per-stream", type=int, default=2, help="memory: volumes per stream")
    ap.add_argument("--shape", default="256,512,512", help="z,y,x of each volume (int16)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--deadline-ms", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = run_memory(args) if args.mode == "memory" else run_deadlines(args)
    res["machine"] = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
