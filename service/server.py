"""The gRPC server: NoduleService + health + reflection + metrics, with dynamic batching.

``NoduleServer(predictor, ServerConfig(...)).start()`` binds (127.0.0.1 by default), and
``stop(grace)`` drains: health flips to NOT_SERVING, new RPCs are refused, in-flight RPCs get
``grace`` seconds to finish (their queued crops still run), then the batcher and the metrics port
close. :func:`serve` does the same on SIGTERM/SIGINT, for ``naslung serve``.

Health checking and reflection are optional imports: where grpcio-health-checking or
grpcio-reflection is missing (a bare load-test box) the server logs a warning and runs without them.
"""
from __future__ import annotations

import copy
import functools
import importlib
import json
import logging
import math
import queue
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np

from service.batching import BatchConfig, BatcherClosed, DeadlineExpired, DynamicBatcher, ItemResult, QueueFull
from service.generated import nodule_service_pb2 as pb
from service.metrics import Metrics
from service.predictor import Predictor
from service.validation import Limits, RequestError, crop_from_request

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NoduleService"].full_name  # naslung.v1.NoduleService
API_VERSION = "naslung.v1"
DEFAULT_EXPLAIN_METHODS = ("cbam", "gradcam")
LABELS = ("benign", "malignant")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051                  # 0 = any free port
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256               # crops waiting for a batch; beyond -> RESOURCE_EXHAUSTED
    workers: int = 64                  # RPC handler threads = max concurrent RPCs (more -> RESOURCE_EXHAUSTED)
    max_message_bytes: int = Limits.max_message_bytes
    max_volume_voxels: int = Limits.max_volume_voxels
    stream_window: int = 32            # crops of one PredictStream in flight at once
    explain_concurrency: int = 1       # Explain RPCs running at once; others wait (up to their deadline)
    metrics_port: int | None = None    # None = no metrics HTTP server; 0 = any free port
    metrics_host: str = "127.0.0.1"
    tls_cert: str | None = None        # PEM paths; both or neither
    tls_key: str | None = None
    token: str | None = None           # bearer token required on every RPC but health checks
    grace_s: float = 10.0              # drain time on shutdown
    reuse_port: bool = False           # SO_REUSEPORT: several processes share the port (service.procs)

    @property
    def limits(self) -> Limits:
        return Limits(max_volume_voxels=self.max_volume_voxels, max_message_bytes=self.max_message_bytes)


class _Malformed:
    """A request whose bytes do not parse as the expected message (answered INVALID_ARGUMENT)."""

    def __init__(self, type_name: str, n_bytes: int, error: Exception) -> None:
        self.message = f"request is not a valid {type_name} message ({n_bytes} bytes): {type(error).__name__}: {error}"


def _safe_parser(cls) -> Callable[[bytes], Any]:
    """Deserializer that never raises (gRPC would answer INTERNAL); bad bytes become _Malformed."""
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as e:
            return _Malformed(cls.DESCRIPTOR.full_name, len(data), e)
    return parse


def _rpc_handlers(servicer: "NoduleServicer") -> dict[str, grpc.RpcMethodHandler]:
    ser = lambda msg: msg.SerializeToString()  # noqa: E731
    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(
            servicer.Predict, request_deserializer=_safe_parser(pb.PredictRequest), response_serializer=ser),
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            servicer.PredictStream, request_deserializer=_safe_parser(pb.PredictRequest), response_serializer=ser),
        "Explain": grpc.unary_unary_rpc_method_handler(
            servicer.Explain, request_deserializer=_safe_parser(pb.ExplainRequest), response_serializer=ser),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo, request_deserializer=_safe_parser(pb.GetModelInfoRequest),
            response_serializer=ser),
    }
    return handlers


class _Fail(Exception):
    """Internal: end an RPC with ``code`` and ``message`` (recorded in metrics)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _explain_fn():
    """``naslung.explain.explain_crop``, or a string saying why it cannot be imported."""
    errors = []
    for mod in ("naslung.explain", "naslung.explain.core"):
        try:
            fn = getattr(importlib.import_module(mod), "explain_crop", None)
        except ImportError as e:
            errors.append(str(e))
            continue
        if fn is not None:
            return fn
    return "; ".join(errors) or "naslung.explain has no explain_crop"


def _remaining(context: grpc.ServicerContext) -> float | None:
    r = context.time_remaining()
    return None if r is None or r > 1e8 else max(float(r), 0.0)


def _array3d(values: np.ndarray) -> pb.Array3D:
    v = np.ascontiguousarray(values, dtype="<f4")
    return pb.Array3D(shape=list(v.shape), dtype=pb.DTYPE_FLOAT32, data=v.tobytes())


def _flatten_metrics(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten_metrics(v, f"{prefix}{k}." if not isinstance(v, (int, float)) else f"{prefix}{k}"))
    elif isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d):
        out[prefix.rstrip(".")] = float(d)
    return out


class NoduleServicer:
    """The four RPCs. Registered with generic handlers (see :func:`_rpc_handlers`) rather than the
    generated ``add_NoduleServiceServicer_to_server``, so that bad request bytes become
    INVALID_ARGUMENT and the server runs on older grpcio releases than the generated stub needs."""

    def __init__(self, predictor: Predictor, batcher: DynamicBatcher, config: ServerConfig, metrics: Metrics) -> None:
        self.predictor = predictor
        self.batcher = batcher
        self.config = config
        self.metrics = metrics
        self._explain_slots = threading.BoundedSemaphore(max(1, config.explain_concurrency))
        self._explain_target = None
        self._explain_target_lock = threading.Lock()

    # -- shared pieces ------------------------------------------------------------------------------
    def _crop(self, req: pb.PredictRequest, field: str = "") -> np.ndarray:
        if isinstance(req, _Malformed):
            raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, req.message)
        try:
            return crop_from_request(req, self.predictor.spec, self.config.limits, field=field)
        except RequestError as e:
            raise _Fail(e.code, e.message) from None

    def _submit(self, crop: np.ndarray, deadline: float | None):
        try:
            return self.batcher.submit(crop, deadline)
        except QueueFull as e:
            raise _Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except BatcherClosed as e:
            raise _Fail(grpc.StatusCode.UNAVAILABLE, str(e)) from None

    def _wait(self, fut, deadline: float | None) -> ItemResult:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return fut.result(timeout=timeout)
        except futures.TimeoutError:
            fut.cancel()  # still queued -> the batcher skips it
            raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting for a batch") from None
        except futures.CancelledError:
            raise _Fail(grpc.StatusCode.CANCELLED, "request cancelled") from None
        except DeadlineExpired as e:
            raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None
        except Exception as e:
            log.exception("prediction failed")
            raise _Fail(grpc.StatusCode.INTERNAL, f"prediction failed: {type(e).__name__}: {e}") from None

    def _response(self, request_id: str, res: ItemResult, t0: float) -> pb.PredictResponse:
        p = float(res.proba[1])
        thr = float(self.predictor.threshold)
        label = int(p > thr)
        return pb.PredictResponse(
            request_id=request_id, malignancy_probability=p, label=label, label_name=LABELS[label],
            members=[pb.MemberProbability(name=n, malignancy_probability=float(mp[1]))
                     for n, mp in zip(self.predictor.member_names, res.member_proba)],
            model_version=self.predictor.version, threshold=thr,
            timing=pb.Timing(queue_ms=res.queue_s * 1e3, inference_ms=res.inference_s * 1e3,
                             total_ms=(time.monotonic() - t0) * 1e3, batch_size=res.batch_size))

    def _predict_one(self, req: pb.PredictRequest, context, field: str = "") -> tuple[pb.PredictResponse, np.ndarray]:
        t0 = time.monotonic()
        rem = _remaining(context)
        deadline = None if rem is None else t0 + rem
        crop = self._crop(req, field)
        fut = self._submit(crop, deadline)
        context.add_callback(fut.cancel)  # client went away -> drop the queued crop
        return self._response(req.request_id, self._wait(fut, deadline), t0), crop

    # -- RPCs ---------------------------------------------------------------------------------------
    def Predict(self, request, context):
        return self._predict_one(request, context)[0]

    def PredictStream(self, request_iterator, context):
        end = object()
        window: queue.Queue = queue.Queue(maxsize=max(1, self.config.stream_window))
        rem = _remaining(context)
        deadline = None if rem is None else time.monotonic() + rem

        def put(item) -> bool:
            while context.is_active():
                try:
                    window.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                for req in request_iterator:
                    t0 = time.monotonic()
                    try:
                        item = (getattr(req, "request_id", ""), t0, self._submit(self._crop(req), deadline), None)
                    except _Fail as f:
                        item = (getattr(req, "request_id", ""), t0, None, f)
                    if not put(item):
                        return
            except Exception as e:  # the client broke or cancelled the stream
                log.debug("stream reader ended: %s", e)
            finally:
                put(end)

        threading.Thread(target=reader, name="naslung-stream-reader", daemon=True).start()
        while True:
            try:
                item = window.get(timeout=0.5)
            except queue.Empty:
                if not context.is_active():
                    return
                continue
            if item is end:
                return
            rid, t0, fut, fail = item
            if fut is not None:
                try:
                    resp = self._response(rid, self._wait(fut, deadline), t0)
                    self.metrics.record("PredictStreamItem", "OK", time.monotonic() - t0)
                    yield resp
                    continue
                except _Fail as f:
                    fail = f
            self.metrics.record("PredictStreamItem", fail.code.name, time.monotonic() - t0)
            yield pb.PredictResponse(request_id=rid, error=pb.ItemError(code=fail.code.value[0], message=fail.message))

    def _explainer(self):
        """A private copy of the models for explanations: their hooks and gradients never touch the
        copy the batcher runs, so explanations do not stall predictions."""
        with self._explain_target_lock:
            if self._explain_target is None:
                target = getattr(self.predictor, "explain_target", None)
                if target is None:
                    raise _Fail(grpc.StatusCode.UNIMPLEMENTED, "this predictor cannot be explained")
                with self.predictor.lock:
                    self._explain_target = copy.deepcopy(target)
            return self._explain_target

    def Explain(self, request, context):
        explain_crop = _explain_fn()
        if isinstance(explain_crop, str):
            raise _Fail(grpc.StatusCode.UNIMPLEMENTED, f"explanations are not available on this server ({explain_crop})")
        methods = tuple(request.methods) or DEFAULT_EXPLAIN_METHODS
        known = self._known_methods()
        if known:
            bad = [m for m in methods if m not in known]
            if bad:
                raise _Fail(grpc.StatusCode.INVALID_ARGUMENT,
                            f"unknown explanation method(s) {bad}; choose from {list(known)}")
        if not request.HasField("input"):
            raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, "input is missing")
        prediction, crop = self._predict_one(request.input, context, field="input")
        rem = _remaining(context)
        if not self._explain_slots.acquire(timeout=rem if rem is not None else None):
            raise _Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "explanation slots busy until the deadline; retry later")
        try:
            spec = self.predictor.spec
            try:
                maps = explain_crop(self._explainer(), crop, spec, methods=methods)
            except ValueError as e:
                raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        finally:
            self._explain_slots.release()
        spacing = [float(spec.spacing_mm)] * 3
        base = spec.normalize(crop) if request.include_png else None
        out = pb.ExplainResponse(prediction=prediction)
        for m in maps:
            values = np.asarray(m.values, dtype=np.float32)
            png = b""
            if request.include_png:
                from service.png import central_slices_png

                png = central_slices_png(values, base)
            out.maps.append(pb.AttributionMap(method=m.method, layer=str(getattr(m, "layer", "") or ""),
                                              values=_array3d(values), spacing=spacing, png=png))
        if request.include_crop:
            out.crop.CopyFrom(_array3d(crop))
        return out

    def _known_methods(self) -> tuple[str, ...]:
        for mod in ("naslung.explain", "naslung.explain.attribution"):
            try:
                ex = importlib.import_module(mod)
            except ImportError:
                continue
            if hasattr(ex, "METHODS"):
                return tuple(ex.METHODS)
        return ()

    def GetModelInfo(self, request, context):
        info = self.predictor.info()
        manifest = info.get("manifest") or {}
        spec = self.predictor.spec
        members = []
        for m in info.get("members", []):
            members.append(pb.MemberInfo(name=str(m.get("name", "")),
                                         config_json=json.dumps(m.get("config", {}), sort_keys=True),
                                         metrics=_flatten_metrics(m.get("metrics", {}))))
        cfg = self.config
        return pb.ModelInfo(
            model_version=self.predictor.version,
            manifest_json=json.dumps(manifest, sort_keys=True, default=str),
            members=members,
            input_spec=pb.CropSpecInfo(size=spec.size, spacing_mm=spec.spacing_mm, hu_min=spec.hu_min,
                                       hu_max=spec.hu_max, pad_hu=spec.pad_hu),
            combination_rule=str(info.get("rule", "")), threshold=float(self.predictor.threshold),
            explain_methods=list(self._known_methods() or DEFAULT_EXPLAIN_METHODS),
            limits=pb.ServerLimits(max_batch=cfg.max_batch, max_delay_ms=cfg.max_delay_ms, max_queue=cfg.max_queue,
                                   max_message_bytes=cfg.max_message_bytes, max_volume_voxels=cfg.max_volume_voxels),
            api_version=API_VERSION)


def _instrument(servicer: NoduleServicer, metrics: Metrics) -> None:
    """Wrap each RPC: map _Fail to a status, count codes and latency, never leak a traceback."""

    def unary(name: str, fn: Callable):
        @functools.wraps(fn)
        def handler(request, context):
            t0 = time.monotonic()
            metrics.inflight.inc()
            code = "OK"
            try:
                if isinstance(request, _Malformed):
                    raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                return fn(request, context)
            except _Fail as f:
                code = f.code.name
                context.abort(f.code, f.message)
            except Exception as e:
                if isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortError" or not context.is_active():
                    code = "CANCELLED" if not context.is_active() else "UNKNOWN"
                    raise
                code = "INTERNAL"
                log.exception("%s failed", name)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            finally:
                metrics.inflight.dec()
                metrics.record(name, code, time.monotonic() - t0)
        return handler

    def streaming(name: str, fn: Callable):
        @functools.wraps(fn)
        def handler(request_iterator, context):
            t0 = time.monotonic()
            metrics.inflight.inc()
            code = "OK"
            try:
                yield from fn(request_iterator, context)
            except _Fail as f:
                code = f.code.name
                context.abort(f.code, f.message)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            except Exception as e:
                if type(e).__name__ == "_AbortError":
                    raise
                code = "INTERNAL"
                log.exception("%s failed", name)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            finally:
                metrics.inflight.dec()
                metrics.record(name, code, time.monotonic() - t0)
        return handler

    for name in ("Predict", "Explain", "GetModelInfo"):
        setattr(servicer, name, unary(name, getattr(servicer, name)))
    servicer.PredictStream = streaming("PredictStream", servicer.PredictStream)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class NoduleServer:
    """One running service; ``start()`` returns the bound port."""

    def __init__(self, predictor: Predictor, config: ServerConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config or ServerConfig()
        cfg = self.config
        if (cfg.tls_cert is None) != (cfg.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        self.metrics = Metrics()
        self.batcher = DynamicBatcher(
            predictor.predict, BatchConfig(max_batch=cfg.max_batch, max_delay_s=cfg.max_delay_ms / 1e3,
                                           max_queue=cfg.max_queue), metrics=self.metrics)
        self.servicer = NoduleServicer(predictor, self.batcher, cfg, self.metrics)
        _instrument(self.servicer, self.metrics)
        interceptors = []
        if cfg.token:
            from service.auth import TokenAuthInterceptor

            interceptors.append(TokenAuthInterceptor(
                cfg.token, on_reject=lambda m: self.metrics.record(m.rsplit("/", 1)[-1], "UNAUTHENTICATED", 0.0)))
        options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                   ("grpc.max_send_message_length", cfg.max_message_bytes),
                   ("grpc.so_reuseport", 1 if cfg.reuse_port else 0)]
        self._pool = futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="naslung-rpc")
        self.server = grpc.server(self._pool, interceptors=interceptors, options=options,
                                  maximum_concurrent_rpcs=cfg.workers)
        handlers = _rpc_handlers(self.servicer)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        if hasattr(self.server, "add_registered_method_handlers"):  # grpcio >= 1.63: faster method lookup
            self.server.add_registered_method_handlers(SERVICE_NAME, handlers)
        self.health = self._add_health()
        self.reflection = self._add_reflection()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def _add_health(self):
        try:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError as e:
            log.warning("grpcio-health-checking is not installed (%s): serving without grpc.health.v1", e)
            return None
        servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self._health_pb2 = health_pb2
        return servicer

    def _add_reflection(self) -> bool:
        try:
            from grpc_reflection.v1alpha import reflection
        except ImportError as e:
            log.warning("grpcio-reflection is not installed (%s): serving without server reflection", e)
            return False
        names = [SERVICE_NAME, reflection.SERVICE_NAME]
        if self.health is not None:
            names.append(self._health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection(names, self.server)
        return True

    def start(self) -> int:
        cfg = self.config
        address = _format_address(cfg.host, cfg.port)
        if cfg.tls_cert:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            port = self.server.add_secure_port(address, creds)
        else:
            if cfg.token and cfg.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("bearer token without TLS on %s: the token crosses the network in clear text", cfg.host)
            port = self.server.add_insecure_port(address)
        if not port:
            raise OSError(f"cannot bind {address} (in use or not a local address)")
        self.port = port
        warmup = getattr(self.predictor, "warmup", None)
        if warmup is not None:
            warmup()
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(cfg.metrics_port, cfg.metrics_host)
        self.server.start()
        if self.health is not None:
            for name in ("", SERVICE_NAME):
                self.health.set(name, self._health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s (%s, model %s, max batch %d, max delay %.1f ms)", SERVICE_NAME,
                 _format_address(cfg.host, port), "TLS" if cfg.tls_cert else "plaintext",
                 self.predictor.version, cfg.max_batch, cfg.max_delay_ms)
        return port

    def stop(self, grace: float | None = None) -> None:
        """Drain and stop: refuse new RPCs, let in-flight ones finish within ``grace`` seconds."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace is None else grace
        log.info("draining (grace %.1f s)", grace)
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.batcher.close(timeout=grace + 5)
        self.metrics.stop_http()
        self._pool.shutdown(wait=False)
        self._stopped.set()
        log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> "NoduleServer":
        if self.port is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)


def serve(predictor: Predictor, config: ServerConfig, on_ready: Callable[[NoduleServer], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain gracefully. For the CLI (main thread only)."""
    server = NoduleServer(predictor, config)
    server.start()
    stop = threading.Event()

    def _signal(signum, frame):
        log.warning("received %s: draining", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
        server.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0
