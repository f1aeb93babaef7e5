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
  naslung serve --random-models tiny,tiny --port 0      # untrained members: load/smoke tests only

then:  naslung predict --server 127.0.0.1:50051 --input scan.nii.gz --world -60.5 12.0 -140.2
       curl -s 127.0.0.1:9100/metrics | grep naslung_
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a bundle over gRPC with batching, health and metrics",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle directory (from naslung ensemble)")
    src.add_argument("--random-models", metavar="NAMES",
                     help="comma-separated registry models with untrained weights (load tests only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1 = this machine only)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port, printed on start)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the models run")
    p.add_argument("--engine", default="auto", choices=("auto", "naive", "fast"),
                   help="inference engine: fast = BN-folded, grouped members (compiled + CUDA graphs on GPU)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="fast-engine arithmetic: auto = bf16 on CUDA, fp32 on CPU; bf16 on a CPU with bf16 "
                        "support is ~3x faster at batch 1 (see docs/benchmarks.md)")
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
    p.add_argument("--grace-s", type=float, default=10.0, help="drain time for in-flight RPCs on shutdown")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from service.auth import read_token
    from service.predictor import EnsemblePredictor, engine_options_for, load_predictor, random_ensemble
    from service.server import ServerConfig, serve

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("service").setLevel(logging.INFO)
    if args.bundle:
        predictor = load_predictor(args.bundle, args.device, engine=args.engine, max_batch=args.max_batch,
                                   engine_options=engine_options_for(args.precision))
    else:
        names = [n.strip() for n in args.random_models.split(",") if n.strip()]
        predictor = EnsemblePredictor(random_ensemble(names), device=args.device, engine=args.engine,
                                      max_batch=args.max_batch,
                                      engine_options=engine_options_for(args.precision))
    config = ServerConfig(
        host=args.host, port=args.port, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue, workers=args.workers, max_message_bytes=int(args.max_message_mb * 2**20),
        max_volume_voxels=args.max_volume_voxels, metrics_port=args.metrics_port, tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=read_token(args.token_file) if args.token_file else None, grace_s=args.grace_s)

    def ready(server) -> None:
        scheme = "TLS" if args.tls_cert else "plaintext"
        print(f"serving naslung.v1.NoduleService on {args.host}:{server.port} ({scheme}"
              f"{', token required' if config.token else ''}); model {predictor.version}, "
              f"{len(predictor.member_names)} member(s), engine {predictor.engine} on {args.device}", flush=True)
        if server.metrics_port is not None:
            print(f"metrics on http://{config.metrics_host}:{server.metrics_port}/metrics", flush=True)

    rc = serve(predictor, config, on_ready=ready)
    print("stopped", flush=True)
    return rc
