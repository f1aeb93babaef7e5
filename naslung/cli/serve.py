"""``naslung serve``: serve a bundle over gRPC (naslung.v1.NoduleService + health + reflection + metrics).

Binds 127.0.0.1 by default: only this machine can connect. To serve a network, pass --host 0.0.0.0
together with --tls-cert/--tls-key and --token-file. SIGTERM or Ctrl-C drains in-flight requests
(up to --grace-s) before exiting.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung serve --bundle runs/bundle --port 50051
  naslung serve --bundle runs/bundle --device cuda --max-batch 64 --max-delay-ms 2 --metrics-port 9100
  naslung serve --bundle runs/bundle --host 0.0.0.0 --tls-cert server.pem --tls-key server.key \\
      --token-file token.txt
  naslung serve --bundle runs/bundle --device cuda --procs 4 --max-batch 64   # 4 processes, one port
  naslung serve --host 0.0.0.0 --tls-cert /tls/tls.crt --tls-key /tls/tls.key --token-file /token/token \
      --health-port 50052            # in a Kubernetes pod (deploy/k8s/serve/): probes use port 50052
  naslung serve --random-models tiny,tiny --port 0      # untrained members: load/smoke tests only

then:  naslung predict --server 127.0.0.1:50051 --input scan.nii.gz --world -60.5 12.0 -140.2
       curl -s 127.0.0.1:9100/metrics | grep naslung_
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a bundle over gRPC with batching, health and metrics",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle directory (from naslung ensemble; default: the shipped "
                                      "models/lidc-voi-ensemble)")
    src.add_argument("--random-models", metavar="NAMES",
                     help="comma-separated registry models with untrained weights (load tests only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1 = this machine only)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port, printed on start)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the models run")
    p.add_argument("--engine", default="auto", choices=("auto", "naive", "fast"),
                   help="inference engine: fast = BN folded (Triton kernels + CUDA graphs on GPU), naive = members in turn")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="fast-engine arithmetic: auto = bf16 on CUDA and on CPUs with bf16 hardware "
                        "(AVX512-BF16/AMX; ~2.5x faster at batch 1, probabilities within 1e-2), else fp32")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch one forward pass takes")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="longest a request waits for others to fill its batch")
    p.add_argument("--max-queue", type=int, default=256,
                   help="crops waiting for a batch before new ones get RESOURCE_EXHAUSTED")
    p.add_argument("--workers", type=int, default=64,
                   help="RPC threads = concurrent RPCs served; more get RESOURCE_EXHAUSTED")
    p.add_argument("--max-message-mb", type=float, default=160.0, help="largest request/response message")
    p.add_argument("--max-volume-voxels", type=int, default=64 * 1024 * 1024,
                   help="largest volume (voxels) a request may carry")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (0 = any free port)")
    p.add_argument("--tls-cert", default=None, help="server certificate (PEM); enables TLS with --tls-key")
    p.add_argument("--tls-key", default=None, help="server private key (PEM)")
    p.add_argument("--token-file", default=None,
                   help="file holding a bearer token every RPC but health checks must present")
    p.add_argument("--health-port", type=int, default=None,
                   help="also serve grpc.health.v1 alone, in plaintext, on this port (0 = any free port): for "
                        "Kubernetes gRPC probes, which cannot use TLS (default: health on the main port only)")
    p.add_argument("--grace-s", type=float, default=10.0, help="drain time for in-flight RPCs on shutdown")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--procs", type=int, default=1,
                   help="server processes sharing the port (SO_REUSEPORT, Linux); each loads the bundle and "
                        "batches on its own. One process tops out near 1.6k predictions/s: use 2-4 on a GPU. "
                        "With --metrics-port P, process i serves metrics on P+i")
    lim = p.add_argument_group("fault tolerance (docs/service.md: Limits)")
    lim.add_argument("--insecure", action="store_true",
                     help="allow a non-loopback --host with neither TLS nor a token (refused otherwise)")
    lim.add_argument("--stream-slots", type=int, default=16, help="concurrent PredictStream calls, all clients")
    lim.add_argument("--streams-per-peer", type=int, default=4,
                     help="concurrent PredictStream calls per client address (its IP, over any number of "
                          "connections; clients behind one NAT or proxy share it)")
    lim.add_argument("--stream-idle-s", type=float, default=30.0, help="close a stream idle this long")
    lim.add_argument("--explain-queue", type=int, default=4, help="Explain calls admitted at once (running + waiting)")
    lim.add_argument("--max-call-s", type=float, default=120.0, help="bound for calls that set no deadline")
    lim.add_argument("--max-inflight-mb", type=float, default=768.0,
                     help="memory budget for requests being processed (charged at 5x their size)")
    return p


def make_predictor(bundle: str | None, random_models: str | None, device: str, engine: str, max_batch: int,
                   precision: str, threads: int | None = None):
    """Build the server's predictor (module level, so each server process can build its own)."""
    import torch

    from service.predictor import EnsemblePredictor, engine_options_for, load_predictor, random_ensemble

    if threads:
        torch.set_num_threads(threads)
    if bundle:
        return load_predictor(bundle, device, engine=engine, max_batch=max_batch,
                              engine_options=engine_options_for(precision, device))
    names = [n.strip() for n in (random_models or "").split(",") if n.strip()]
    return EnsemblePredictor(random_ensemble(names), device=device, engine=engine, max_batch=max_batch,
                             engine_options=engine_options_for(precision, device))


def run(args: argparse.Namespace) -> int:
    import functools
    import logging

    import torch

    from service.auth import read_token
    from service.procs import serve_processes
    from service.server import ServerConfig

    if not args.bundle and not args.random_models:
        from naslung.ensemble.bundle import default_bundle

        args.bundle = str(default_bundle())
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    if args.procs < 1:
        raise ValueError(f"--procs must be at least 1, got {args.procs}")
    if args.health_port is not None and (args.health_port < 0 or args.health_port > 65535
                                         or (args.health_port and args.health_port == args.port)):
        raise ValueError(f"--health-port must be 0..65535 and differ from --port, got {args.health_port}")
    logging.getLogger("service").setLevel(logging.INFO)
    factory = functools.partial(make_predictor, args.bundle, args.random_models, args.device, args.engine,
                                args.max_batch, args.precision, args.threads)
    config = ServerConfig(
        host=args.host, port=args.port, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue, workers=args.workers, max_message_bytes=int(args.max_message_mb * 2**20),
        max_volume_voxels=args.max_volume_voxels, metrics_port=args.metrics_port, tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=read_token(args.token_file) if args.token_file else None, grace_s=args.grace_s,
        health_port=args.health_port,
        insecure=args.insecure, stream_slots=args.stream_slots, streams_per_peer=args.streams_per_peer,
        stream_idle_s=args.stream_idle_s, explain_queue=args.explain_queue, max_call_s=args.max_call_s,
        max_inflight_mb=args.max_inflight_mb)
    from service.server import check_exposure

    check_exposure(config)  # before any bundle is loaded or process started
    # One process: load here, so a bad bundle fails before anything binds. Several: each child
    # loads (and verifies) its own copy, and a child that cannot stops the whole group.
    predictor = factory() if args.procs == 1 else None
    if predictor is not None:
        model = (f"model {predictor.version}, {len(predictor.member_names)} member(s), "
                 f"engine {predictor.engine} on {args.device}")
    else:
        model = f"{args.bundle or 'random models ' + args.random_models} on {args.device}, loaded per process"

    def ready(server) -> None:
        scheme = "TLS" if args.tls_cert else "plaintext"
        procs = f", {args.procs} processes" if args.procs > 1 else ""
        print(f"serving naslung.v1.NoduleService on {args.host}:{server.port} ({scheme}"
              f"{', token required' if config.token else ''}{procs}); {model}", flush=True)
        ports = getattr(server, "metrics_ports", None) or (server.metrics_port,)
        for mport in ports:
            if mport is not None:
                print(f"metrics on http://{config.metrics_host}:{mport}/metrics", flush=True)
        if getattr(server, "health_port", None) is not None:
            print(f"health (grpc.health.v1 only, plaintext) on {args.host}:{server.health_port}", flush=True)

    rc = serve_processes((lambda: predictor) if predictor is not None else factory, config, args.procs,
                         on_ready=ready)
    print("stopped", flush=True)
    return rc
