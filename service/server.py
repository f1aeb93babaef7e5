"""The gRPC server: NoduleService + health + reflection + metrics, with dynamic batching.

``NoduleServer(predictor, ServerConfig(...)).start()`` binds (127.0.0.1 by default), and
``stop(grace)`` drains: health flips to NOT_SERVING, new RPCs are refused, in-flight RPCs get
``grace`` seconds to finish (their queued crops still run), then the batcher and the metrics port
close. :func:`serve` does the same on SIGTERM/SIGINT, for ``naslung serve``.

Health checking and reflection are optional imports: where grpcio-health-checking or
grpcio-reflection is missing (a bare load-test box) the server logs a warning and runs without them.
"""
from __future__ import annotations

import functools
import importlib
import ipaddress
import json
import logging
import math
import queue
import signal
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np

from service.admission import AdmissionInterceptor, ByteBudget, Route, SlotBudget, peer_host
from service.batching import BatchConfig, BatcherClosed, DeadlineExpired, DynamicBatcher, ItemResult, QueueFull
from service.explaining import MAX_METHODS_PER_REQUEST, ExplainCost, Explainer, ExplainStopped
from service.generated import nodule_service_pb2 as pb
from service.metrics import Metrics
from service.predictor import Predictor
from service.validation import Limits, RequestError, crop_from_request

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NoduleService"].full_name  # naslung.v1.NoduleService
API_VERSION = "naslung.v1"
DEFAULT_EXPLAIN_METHODS = ("cbam", "gradcam")
LABELS = ("benign", "malignant")


HEALTH_RESERVE_THREADS = 8  # threads no budget can take: health checks always find one


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051                  # 0 = any free port
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256               # crops waiting for a batch; beyond -> RESOURCE_EXHAUSTED
    workers: int = 64                  # concurrent Predict calls (more -> RESOURCE_EXHAUSTED)
    max_message_bytes: int = Limits.max_message_bytes
    max_volume_voxels: int = Limits.max_volume_voxels
    stream_window: int = 32            # crops of one PredictStream in flight at once
    stream_slots: int = 16             # concurrent PredictStream calls, all clients together
    streams_per_peer: int = 4          # concurrent PredictStream calls of one client address (admission.peer_host)
    stream_idle_s: float = 30.0        # a stream with no request and nothing in flight this long is closed
    stream_read_slots: int = 2         # streams reading a message at once (one per client address): memory
    stream_read_hold_s: float = 5.0    # a read slot held without a message while others wait -> stream closed
    explain_concurrency: int = 1       # Explain RPCs computing at once
    explain_queue: int = 4             # Explain RPCs admitted at once (computing + waiting for a slot)
    other_slots: int = 8               # GetModelInfo, reflection, health Watch
    max_call_s: float = 120.0          # bound on any call (or stream item) that carries no deadline
    max_inflight_mb: float = 768.0     # request memory budget (see service.admission.ByteBudget)
    request_memory_factor: float = 5.0  # bytes a request pins per byte on the wire (decode + resample)
    receive_slots: int = 2             # unary requests being read off the wire at once (each up to max message)
    explain_cost: ExplainCost = ExplainCost()
    metrics_port: int | None = None    # None = no metrics HTTP server; 0 = any free port
    metrics_host: str = "127.0.0.1"
    tls_cert: str | None = None        # PEM paths; both or neither
    tls_key: str | None = None
    token: str | None = None           # bearer token required on every RPC but health checks
    insecure: bool = False             # allow a non-loopback bind with neither TLS nor a token
    grace_s: float = 10.0              # drain time on shutdown
    reuse_port: bool = False           # SO_REUSEPORT: several processes share the port (service.procs)
    health_port: int | None = None     # plaintext grpc.health.v1-only port (Kubernetes probes); 0 = any free port

    @property
    def limits(self) -> Limits:
        return Limits(max_volume_voxels=self.max_volume_voxels, max_message_bytes=self.max_message_bytes)

    @property
    def pool_threads(self) -> int:
        """RPC threads: every budget can be full and a health check still finds a thread."""
        return (self.workers + self.stream_slots + self.explain_queue + self.other_slots
                + HEALTH_RESERVE_THREADS)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: ServerConfig) -> None:
    """Refuse to open a non-loopback port to anyone who can reach it, unless asked to (--insecure)."""
    if is_loopback(cfg.host) or cfg.tls_cert or cfg.token:
        return
    if not cfg.insecure:
        raise ValueError(f"refusing to serve on {cfg.host} with neither TLS nor a token: anyone who can reach "
                         f"this address could use the service. Pass --tls-cert/--tls-key and --token-file, or "
                         f"--insecure to serve it open anyway (trusted network only).")
    log.warning("INSECURE: serving on %s with neither TLS nor a bearer token (--insecure): anyone who can "
                "reach this address can call the service", cfg.host)


class _Malformed:
    """A request whose bytes do not parse as the expected message (answered INVALID_ARGUMENT)."""

    def __init__(self, type_name: str, n_bytes: int, error: Exception) -> None:
        # The parser's own text stays in the server log: clients get what is wrong, not internals.
        log.debug("unparseable %s (%d bytes): %s: %s", type_name, n_bytes, type(error).__name__, error)
        self.message = f"request is not a valid {type_name} message ({n_bytes:,} bytes do not parse)"


class _Refused:
    """A request refused before parsing because the memory budget is full (RESOURCE_EXHAUSTED)."""

    def __init__(self, n_bytes: int, charge: int, budget: ByteBudget) -> None:
        self.message = (f"server memory budget for requests in flight is full ({budget.used / 2**20:,.0f} of "
                        f"{budget.limit / 2**20:,.0f} MiB in use; this {n_bytes / 2**20:,.1f} MiB request needs "
                        f"{charge / 2**20:,.0f} MiB); retry with backoff")


class _Admitted:
    """A parsed request and its memory reservation (released when the request is done)."""

    __slots__ = ("msg", "ticket")

    def __init__(self, msg, ticket) -> None:
        self.msg, self.ticket = msg, ticket


def _unwrap(request) -> tuple[Any, Any]:
    """(request, ticket or None); _Malformed and _Refused pass through."""
    if isinstance(request, _Admitted):
        return request.msg, request.ticket
    return request, None


def _safe_parser(cls, budget: ByteBudget | None = None, factor: float = 1.0) -> Callable[[bytes], Any]:
    """Deserializer that never raises (gRPC would answer INTERNAL); bad bytes become _Malformed.

    With ``budget``, the request is charged ``len(data) * factor`` bytes *before* it is parsed, and
    refused (_Refused) when that does not fit: the parse and the decoding that follow are where a
    big volume's memory goes."""
    def parse(data: bytes):
        ticket = None
        if budget is not None:
            charge = int(len(data) * factor)
            ticket = budget.try_reserve(charge)
            if ticket is None:
                return _Refused(len(data), charge, budget)
        try:
            msg = cls.FromString(data)
        except Exception as e:
            if ticket is not None:
                ticket.release()
            return _Malformed(cls.DESCRIPTOR.full_name, len(data), e)
        return msg if ticket is None else _Admitted(msg, ticket)
    return parse


RECEIVE_WAIT_S = 2.0  # longest a request waits for room in the memory budget before it is received


def _receive_gated(behavior: Callable, parse: Callable[[bytes], Any], receive_budget: ByteBudget,
                   receive_bytes: int, bound_s: float) -> Callable:
    """A unary method served as client-streaming (identical on the wire: one message, then
    half-close), so the server decides *before* the message is read whether there is room for it.

    gRPC reads a unary request before any handler runs, so twelve 128 MiB volumes sent at once
    were all in memory before the server could refuse eleven of them. Here each call first takes a
    receive slot -- ``receive_bytes`` (the largest message allowed) from ``receive_budget``, a small
    pool of its own, waiting up to RECEIVE_WAIT_S or its deadline -- and only then pulls its
    message; HTTP/2 flow control holds the bytes of the others on their clients meanwhile. Once
    read, the request is charged to the processing budget (``parse``) or refused, and the slot is
    free for the next. Receiving a crop takes microseconds, so small calls barely wait."""
    def gated(request_iterator, context):
        end = min(_deadline(context, bound_s), time.monotonic() + RECEIVE_WAIT_S)
        ticket = None
        while ticket is None and context.is_active():
            left = end - time.monotonic()
            if left <= 0:
                break
            ticket = receive_budget.try_reserve(receive_bytes, timeout=min(0.05, left))
        if ticket is None:
            return behavior(_Refused(receive_bytes, receive_bytes, receive_budget), context)
        try:
            data = next(request_iterator, None)
            if data is None:
                request = _Malformed("request", 0, ValueError("no request message"))
            else:
                request = parse(data)  # charged to the processing budget (or refused) before parsing
            del data
        finally:
            ticket.release()
        return behavior(request, context)
    return gated


def _rpc_handlers(servicer: "NoduleServicer", budget: ByteBudget | None = None, factor: float = 1.0,
                  receive_budget: ByteBudget | None = None, receive_bytes: int = 0,
                  bound_s: float = 120.0) -> dict[str, grpc.RpcMethodHandler]:
    ser = lambda msg: msg.SerializeToString()  # noqa: E731

    def unary(behavior: Callable, cls) -> grpc.RpcMethodHandler:
        parse = _safe_parser(cls, budget, factor)
        if receive_budget is None or receive_bytes <= 0:
            return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=parse,
                                                       response_serializer=ser)
        return grpc.stream_unary_rpc_method_handler(
            _receive_gated(behavior, parse, receive_budget, receive_bytes, bound_s), request_deserializer=None,
            response_serializer=ser)

    handlers = {
        "Predict": unary(servicer.Predict, pb.PredictRequest),
        # raw bytes: the stream charges and parses each message itself (NoduleServicer._admit_stream_item)
        "PredictStream": grpc.stream_stream_rpc_method_handler(
            servicer.PredictStream, request_deserializer=None, response_serializer=ser),
        "Explain": unary(servicer.Explain, pb.ExplainRequest),
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


def _internal(what: str, error: BaseException, request_id: str = "", peer: str = "") -> _Fail:
    """An unexpected failure: the details (exception text, traceback, library paths) go to the
    server log under a fresh error id; the client gets only the id to quote."""
    eid = uuid.uuid4().hex[:12]
    log.error("%s failed [error id %s, request_id %r, peer %s]: %s: %s", what, eid, request_id, peer,
              type(error).__name__, error, exc_info=(type(error), error, error.__traceback__))
    return _Fail(grpc.StatusCode.INTERNAL, f"internal error (error id {eid}); the server log has the details")


# The client's deadline runs out slightly before the server's copy of it (the server starts its
# clock when the headers arrive), so the client's cancellation at its deadline reaches the server
# just before the server's own deadline. A call that ended this close to its deadline ended by it.
DEADLINE_SLACK_S = 0.1


def _ended_by_deadline(deadline: float | None, at: float | None = None) -> bool:
    at = time.monotonic() if at is None else at
    return deadline is not None and at >= deadline - DEADLINE_SLACK_S


def _delivered(code: str, context, deadline: float | None, ended_at: list[float]) -> str:
    """What the client actually received: a call that was no longer active when its handler
    finished ended with the client's deadline (DEADLINE_EXCEEDED) or a cancellation, whatever the
    handler produced. ``ended_at`` holds the time the call terminated (a context callback)."""
    try:
        active = context.is_active()
    except Exception:
        active = True
    if active and not ended_at:
        return code
    if _ended_by_deadline(deadline, ended_at[0] if ended_at else None):
        return "DEADLINE_EXCEEDED"
    return "CANCELLED"


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


def _deadline(context: grpc.ServicerContext, bound_s: float, t0: float | None = None) -> float:
    """The call's deadline as a monotonic time, never further than ``bound_s`` away: every wait
    the server does is bounded, even for a client that set no deadline."""
    t0 = time.monotonic() if t0 is None else t0
    rem = _remaining(context)
    return t0 + (bound_s if rem is None else min(rem, bound_s))


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
    INVALID_ARGUMENT and the server runs on older grpcio releases than the generated stub needs.

    Every step that costs something -- resampling a volume, joining a batch, waiting for an
    explanation slot, each forward pass of an explanation -- first checks that the caller is still
    there and its deadline has not passed; work for a caller who is gone is dropped and counted
    (``naslung_dropped_expired_total{stage}``), never done."""

    def __init__(self, predictor: Predictor, batcher: DynamicBatcher, config: ServerConfig, metrics: Metrics,
                 bytes_budget: ByteBudget | None = None, stream_reads: SlotBudget | None = None) -> None:
        self.predictor = predictor
        self.bytes_budget = bytes_budget  # request memory budget (None: unbounded, unit tests only)
        self.stream_reads = stream_reads  # read slots for PredictStream messages (None: ungated)
        self.batcher = batcher
        self.config = config
        self.metrics = metrics
        self._explain_slots = threading.BoundedSemaphore(max(1, config.explain_concurrency))
        self._explainer_obj: Explainer | None = None
        self._explain_target_lock = threading.Lock()

    # -- shared pieces ------------------------------------------------------------------------------
    def _crop(self, req: pb.PredictRequest, field: str = "") -> np.ndarray:
        if isinstance(req, _Malformed):
            raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, req.message)
        if isinstance(req, _Refused):
            raise _Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, req.message)
        try:
            return crop_from_request(req, self.predictor.spec, self.config.limits, field=field)
        except RequestError as e:
            raise _Fail(e.code, e.message) from None
        except Exception as e:  # a library failure on input that passed validation: not the client's text
            raise _internal("building the crop", e, getattr(req, "request_id", "")) from None

    @staticmethod
    def _expired(context, deadline: float | None) -> bool:
        r = context.time_remaining()
        return (deadline is not None and time.monotonic() >= deadline) or (r is not None and r <= 0)

    def _alive(self, context, deadline: float | None, stage: str) -> None:
        """Raise _Fail when the caller's deadline has passed (counted under ``stage``) or it is gone."""
        if self._expired(context, deadline) or (not context.is_active() and _ended_by_deadline(deadline)):
            self.metrics.expired(stage)
            raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed ({stage.replace('_', ' ')})")
        if not context.is_active():
            raise _Fail(grpc.StatusCode.CANCELLED, "request cancelled")

    def _submit(self, crop: np.ndarray, deadline: float | None):
        try:
            return self.batcher.submit(crop, deadline)
        except QueueFull as e:
            raise _Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except BatcherClosed as e:
            raise _Fail(grpc.StatusCode.UNAVAILABLE, str(e)) from None

    def _wait(self, fut, deadline: float | None, request_id: str = "") -> ItemResult:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return fut.result(timeout=timeout)
        except futures.TimeoutError:
            if fut.cancel():  # still queued -> the batcher skips it
                self.metrics.expired("queued")
            elif not (fut.done() and isinstance(fut.exception(), DeadlineExpired)):
                self.metrics.wasted_crops.inc()  # the model ran (or runs) it for nobody
            raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting for a batch") from None
        except futures.CancelledError:  # the call ended (context callback) while its crop was queued
            if _ended_by_deadline(deadline):
                self.metrics.expired("queued")
                raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting for a batch") from None
            raise _Fail(grpc.StatusCode.CANCELLED, "request cancelled") from None
        except DeadlineExpired as e:  # counted by the batcher
            raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None
        except Exception as e:
            raise _internal("prediction", e, request_id) from None

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

    def _predict_one(self, req: pb.PredictRequest, context, deadline: float,
                     field: str = "") -> tuple[pb.PredictResponse, np.ndarray]:
        t0 = time.monotonic()
        self._alive(context, deadline, "before_crop")
        crop = self._crop(req, field)
        self._alive(context, deadline, "before_crop")  # resampling a volume takes time
        fut = self._submit(crop, deadline)
        context.add_callback(fut.cancel)  # client went away -> drop the queued crop
        rid = getattr(req, "request_id", "")
        return self._response(rid, self._wait(fut, deadline, rid), t0), crop

    # -- RPCs ---------------------------------------------------------------------------------------
    def Predict(self, request, context):
        return self._predict_one(request, context, _deadline(context, self.config.max_call_s))[0]

    def _admit_stream_item(self, raw: bytes, deadline: float, alive: Callable[[], bool]):
        """Charge one stream message (``len(raw) * factor``) to the request memory budget before it
        is parsed, waiting for room up to the item's deadline (or until ``alive()`` turns false): a
        stream is backpressured (its next message is not read meanwhile), not refused, while unary
        calls hold the budget. Returns the parsed request and its ticket, or a _Refused/_Malformed."""
        charge = int(len(raw) * self.config.request_memory_factor)
        ticket = None
        if self.bytes_budget is not None:
            while ticket is None and alive():
                left = deadline - time.monotonic()
                ticket = self.bytes_budget.try_reserve(charge, timeout=max(0.0, min(0.25, left)))
                if left <= 0:
                    break
            if ticket is None:
                return _Refused(len(raw), charge, self.bytes_budget), None
        request = _safe_parser(pb.PredictRequest)(raw)
        if isinstance(request, _Malformed) and ticket is not None:
            ticket.release()
            ticket = None
        return request, ticket

    def PredictStream(self, request_iterator, context):
        """One response per request, in order. Memory is bounded the way unary calls are:

        * a message is read only while the stream holds a *read slot* (``stream_read_slots`` in
          all, one per client address), each worth one max-size message of memory; HTTP/2 flow
          control keeps the other streams' bytes on their clients meanwhile;
        * once read, the message is charged to the request memory budget before it is parsed
          (waiting for room, up to the item's deadline), and that charge is held until its crop is cut;
        * each queued crop (up to ``stream_window`` per stream) stays charged to the same budget until
          its answer is sent, so what a stream holds queued counts against the ceiling too.
        A stream that holds a read slot without sending while another stream waits for one is closed
        after ``stream_read_hold_s`` (its answers so far are delivered first), so idle streams cannot
        stall everyone else's."""
        cfg = self.config
        end = object()
        window: queue.Queue = queue.Queue(maxsize=max(1, cfg.stream_window))
        rem = _remaining(context)
        stream_deadline = None if rem is None else time.monotonic() + rem
        stop = threading.Event()
        # "busy": the server, not the client, is the reason nothing happens (parsing, waiting for room);
        # "reading": holding a read slot, blocked on the client's next message
        state = {"last": time.monotonic(), "busy": False, "reading": False}
        key = peer_host(context.peer())
        gate = self.stream_reads

        def put(item) -> bool:
            while context.is_active() and not stop.is_set():
                try:
                    window.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def take_read_slot() -> bool:
            """Wait for a read slot, bounded by the stream's deadline and max_call_s; False when the
            stream should stop reading (an over-long wait ends the stream with RESOURCE_EXHAUSTED)."""
            if gate is None:
                return True
            state["busy"] = True  # waiting for the server: not the client's idle time
            give_up = time.monotonic() + cfg.max_call_s
            try:
                while context.is_active() and not stop.is_set():
                    now = time.monotonic()
                    if stream_deadline is not None and now >= stream_deadline:
                        return False
                    if now >= give_up:
                        put(_Fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"waited {cfg.max_call_s:g} s for a stream read slot ({gate.limit} streams "
                                  f"read at a time); retry with backoff"))
                        return False
                    if gate.acquire(key, timeout=min(0.25, give_up - now)):
                        return True
                return False
            finally:
                state["busy"], state["last"] = False, time.monotonic()

        def reader() -> None:
            try:
                while True:
                    if not take_read_slot():
                        return
                    try:
                        state["reading"] = True
                        raw = next(request_iterator, end)
                        state["reading"] = False
                        if raw is end:
                            return
                        state["busy"], state["last"] = True, time.monotonic()
                        t0 = time.monotonic()
                        deadline = t0 + cfg.max_call_s
                        if stream_deadline is not None:
                            deadline = min(deadline, stream_deadline)
                        req, ticket = self._admit_stream_item(
                            raw, deadline, lambda: context.is_active() and not stop.is_set())
                        del raw
                    finally:
                        state["reading"] = False
                        if gate is not None:
                            gate.release(key)
                    rid = getattr(req, "request_id", "")
                    held = None  # the queued crop's charge, released when its answer is sent
                    try:
                        if time.monotonic() >= deadline:
                            self.metrics.expired("before_crop")
                            raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed (before crop)")
                        crop = self._crop(req)
                        del req
                        if self.bytes_budget is not None:
                            held = self.bytes_budget.try_reserve(crop.nbytes,
                                                                 timeout=max(0.0, deadline - time.monotonic()))
                            if held is None:
                                raise _Fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            _Refused(crop.nbytes, crop.nbytes, self.bytes_budget).message)
                        item = (rid, t0, self._submit(crop, deadline), None, deadline, held)
                    except _Fail as f:
                        if held is not None:
                            held.release()
                        item = (rid, t0, None, f, deadline, None)
                    finally:
                        if ticket is not None:
                            ticket.release()  # the crop is cut: the request's bytes are no longer needed
                    if not put(item):
                        _drop(item)
                        return
                    state["busy"], state["last"] = False, time.monotonic()
            except Exception as e:  # the client broke or cancelled the stream
                log.debug("stream reader ended: %s", e)
            finally:
                state["busy"] = False
                put(end)

        def _drop(item) -> None:
            if item[2] is not None:
                item[2].cancel()
            if item[5] is not None:
                item[5].release()

        threading.Thread(target=reader, name="naslung-stream-reader", daemon=True).start()
        try:
            while True:
                try:
                    item = window.get(timeout=0.25)
                except queue.Empty:
                    if not context.is_active():
                        return
                    idle = time.monotonic() - state["last"]
                    if not state["busy"] and idle > cfg.stream_idle_s:
                        raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"stream idle for {idle:.0f} s with nothing in flight (limit "
                                    f"{cfg.stream_idle_s:g} s); closed to free its slot -- open a new stream "
                                    f"when there is work")
                    if state["reading"] and gate is not None and gate.waiting and idle > cfg.stream_read_hold_s:
                        raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"stream sent nothing for {idle:.0f} s while holding a read slot other "
                                    f"streams are waiting for (limit {cfg.stream_read_hold_s:g} s when contended); "
                                    f"closed -- send requests back to back, or open a stream when there is work")
                    continue
                if item is end:
                    return
                if isinstance(item, _Fail):  # the reader gave up on the whole stream
                    raise item
                rid, t0, fut, fail, deadline, held = item
                try:
                    if fut is not None:
                        try:
                            resp = self._response(rid, self._wait(fut, deadline, rid), t0)
                        except _Fail as f:
                            fail = f
                        else:
                            if held is not None:
                                held.release()
                            yield resp
                            state["last"] = time.monotonic()
                            self.metrics.record("PredictStreamItem", "OK", time.monotonic() - t0)
                            continue
                finally:
                    if held is not None:
                        held.release()
                yield pb.PredictResponse(request_id=rid, error=pb.ItemError(code=fail.code.value[0],
                                                                            message=fail.message))
                state["last"] = time.monotonic()
                self.metrics.record("PredictStreamItem", fail.code.name, time.monotonic() - t0)
        finally:
            stop.set()
            while True:  # whatever is still queued for this stream runs for nobody: drop it
                try:
                    item = window.get_nowait()
                except queue.Empty:
                    break
                if item is not end and not isinstance(item, _Fail):
                    _drop(item)

    def _explainer(self) -> Explainer:
        """A private copy of the models for explanations: their hooks and gradients never touch the
        copy the batcher runs, so explanations do not stall predictions."""
        with self._explain_target_lock:
            if self._explainer_obj is None:
                target = getattr(self.predictor, "explain_target", None)
                if target is None:
                    raise _Fail(grpc.StatusCode.UNIMPLEMENTED, "this predictor cannot be explained")
                with self.predictor.lock:
                    self._explainer_obj = Explainer(target, self.config.explain_cost)
            return self._explainer_obj

    def _explain_methods(self, request) -> tuple[str, ...]:
        if len(request.methods) > MAX_METHODS_PER_REQUEST:
            raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.methods)} explanation methods requested; "
                                                          f"at most {MAX_METHODS_PER_REQUEST}")
        methods = tuple(dict.fromkeys(m.strip().lower() for m in request.methods)) or DEFAULT_EXPLAIN_METHODS
        known = self._known_methods()
        if known:
            bad = [m for m in methods if m not in known]
            if bad:
                raise _Fail(grpc.StatusCode.INVALID_ARGUMENT,
                            f"unknown explanation method(s) {[b[:40] for b in bad[:4]]}; choose from {list(known)}")
        return methods

    def _acquire_explain_slot(self, context, deadline: float, cancelled: threading.Event) -> None:
        while not self._explain_slots.acquire(timeout=max(0.0, min(0.05, deadline - time.monotonic()))):
            if self._expired(context, deadline) or (not context.is_active() and _ended_by_deadline(deadline)):
                self.metrics.expired("explain_wait")
                raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                            "deadline passed while waiting for an explanation slot (explanations run "
                            f"{self.config.explain_concurrency} at a time)")
            if cancelled.is_set() or not context.is_active():
                raise _Fail(grpc.StatusCode.CANCELLED, "request cancelled")

    def Explain(self, request, context):
        explain_crop = _explain_fn()
        if isinstance(explain_crop, str):  # why (an import error, with paths) goes to the log only
            eid = uuid.uuid4().hex[:12]
            log.error("Explain unavailable [error id %s, peer %s]: %s", eid, context.peer(), explain_crop)
            raise _Fail(grpc.StatusCode.UNIMPLEMENTED, f"explanations are not available on this server "
                                                       f"(error id {eid}; the server log says why)")
        deadline = _deadline(context, self.config.max_call_s)
        methods = self._explain_methods(request)
        if not request.HasField("input"):
            raise _Fail(grpc.StatusCode.INVALID_ARGUMENT, "input is missing")
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        prediction, crop = self._predict_one(request.input, context, deadline, field="input")
        self._acquire_explain_slot(context, deadline, cancelled)
        try:
            spec = self.predictor.spec
            try:
                maps = self._explainer().explain(crop, spec, methods, deadline=deadline, cancelled=cancelled.is_set)
            except ExplainStopped as e:
                if e.reason == "deadline" or _ended_by_deadline(deadline):
                    self.metrics.expired("explain_run")
                    raise _Fail(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed during the explanation; "
                                                                   "it was stopped") from None
                raise _Fail(grpc.StatusCode.CANCELLED, "request cancelled") from None
            except _Fail:
                raise
            except Exception as e:  # input and methods were validated: anything else is ours
                raise _internal("explanation", e, request.input.request_id, context.peer()) from None
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

    def _limits(self) -> pb.ServerLimits:
        """Every limit a client can run into, so it can size its calls instead of probing for
        RESOURCE_EXHAUSTED (fields 6+ are additions within naslung.v1)."""
        cfg = self.config
        cost = cfg.explain_cost
        return pb.ServerLimits(
            max_batch=cfg.max_batch, max_delay_ms=cfg.max_delay_ms, max_queue=cfg.max_queue,
            max_message_bytes=cfg.max_message_bytes, max_volume_voxels=cfg.max_volume_voxels,
            predict_slots=cfg.workers, explain_slots=cfg.explain_queue,
            explain_concurrency=max(1, cfg.explain_concurrency), stream_slots=cfg.stream_slots,
            streams_per_client=cfg.streams_per_peer, other_slots=cfg.other_slots, stream_idle_s=cfg.stream_idle_s,
            stream_window=max(1, cfg.stream_window), max_call_s=cfg.max_call_s,
            max_inflight_bytes=int(cfg.max_inflight_mb * 2**20), request_memory_factor=cfg.request_memory_factor,
            receive_slots=max(1, cfg.receive_slots), stream_read_slots=max(1, cfg.stream_read_slots),
            stream_read_hold_s=cfg.stream_read_hold_s, explain_ig_steps=cost.ig_steps,
            explain_occlusion_passes=cost.occlusion_positions(self.predictor.spec.size),
            explain_max_methods=MAX_METHODS_PER_REQUEST)

    def GetModelInfo(self, request, context):
        info = self.predictor.info()
        manifest = info.get("manifest") or {}
        spec = self.predictor.spec
        members = []
        for m in info.get("members", []):
            members.append(pb.MemberInfo(name=str(m.get("name", "")),
                                         config_json=json.dumps(m.get("config", {}), sort_keys=True),
                                         metrics=_flatten_metrics(m.get("metrics", {}))))
        return pb.ModelInfo(
            model_version=self.predictor.version,
            manifest_json=json.dumps(manifest, sort_keys=True, default=str),
            members=members,
            input_spec=pb.CropSpecInfo(size=spec.size, spacing_mm=spec.spacing_mm, hu_min=spec.hu_min,
                                       hu_max=spec.hu_max, pad_hu=spec.pad_hu),
            combination_rule=str(info.get("rule", "")), threshold=float(self.predictor.threshold),
            explain_methods=list(self._known_methods() or DEFAULT_EXPLAIN_METHODS),
            limits=self._limits(),
            api_version=API_VERSION)


def _is_abort(e: BaseException) -> bool:
    return isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortError"


def _instrument(servicer: NoduleServicer, metrics: Metrics) -> None:
    """Wrap each RPC: map _Fail to a status, count what the client received and the latency,
    release the request's memory reservation, never leak a traceback or a library message."""

    def unary(name: str, fn: Callable):
        @functools.wraps(fn)
        def handler(request, context):
            t0 = time.monotonic()
            rem = _remaining(context)
            deadline = None if rem is None else t0 + rem
            request, ticket = _unwrap(request)
            ended: list[float] = []
            context.add_callback(lambda: ended.append(time.monotonic()))
            metrics.inflight.inc()
            code = "OK"
            try:
                if isinstance(request, (_Malformed, _Refused)):
                    raise _Fail(grpc.StatusCode.INVALID_ARGUMENT if isinstance(request, _Malformed)
                                else grpc.StatusCode.RESOURCE_EXHAUSTED, request.message)
                return fn(request, context)
            except _Fail as f:
                code = f.code.name
                context.abort(f.code, f.message)
            except Exception as e:
                if _is_abort(e) or not context.is_active():
                    code = "CANCELLED" if not context.is_active() else "UNKNOWN"
                    raise
                f = _internal(name, e, str(getattr(request, "request_id", "")), context.peer())
                code = f.code.name
                context.abort(f.code, f.message)
            finally:
                del request
                if ticket is not None:
                    ticket.release()
                metrics.inflight.dec()
                metrics.record(name, _delivered(code, context, deadline, ended), time.monotonic() - t0)
        return handler

    def streaming(name: str, fn: Callable):
        @functools.wraps(fn)
        def handler(request_iterator, context):
            t0 = time.monotonic()
            rem = _remaining(context)
            deadline = None if rem is None else t0 + rem
            ended: list[float] = []
            context.add_callback(lambda: ended.append(time.monotonic()))
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
                if _is_abort(e):
                    raise
                f = _internal(name, e, "", context.peer())
                code = f.code.name
                context.abort(f.code, f.message)
            finally:
                metrics.inflight.dec()
                metrics.record(name, _delivered(code, context, deadline, ended), time.monotonic() - t0)
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
        check_exposure(cfg)
        self.metrics = Metrics()
        self.batcher = DynamicBatcher(
            predictor.predict, BatchConfig(max_batch=cfg.max_batch, max_delay_s=cfg.max_delay_ms / 1e3,
                                           max_queue=cfg.max_queue), metrics=self.metrics)
        cfg.explain_cost.check(predictor.spec.size)
        self.bytes_budget = ByteBudget(int(cfg.max_inflight_mb * 2**20), on_change=self.metrics.inflight_bytes.set)
        # each read slot lets one stream pull one message of up to max_message_bytes
        self.stream_reads = SlotBudget("PredictStream reads", max(1, cfg.stream_read_slots), per_key=1)
        self.servicer = NoduleServicer(predictor, self.batcher, cfg, self.metrics, bytes_budget=self.bytes_budget,
                                       stream_reads=self.stream_reads)
        _instrument(self.servicer, self.metrics)
        self.budgets = {
            "Predict": SlotBudget("Predict", cfg.workers),
            "PredictStream": SlotBudget("PredictStream", cfg.stream_slots, per_key=cfg.streams_per_peer),
            "Explain": SlotBudget("Explain", cfg.explain_queue),
            "other": SlotBudget("GetModelInfo/reflection/health watch", cfg.other_slots,
                                per_key=max(1, cfg.other_slots // 2)),
        }
        prefix = f"/{SERVICE_NAME}/"

        def rejected(method: str, why: str) -> None:
            short = method.rsplit("/", 1)[-1]
            self.metrics.admission_rejected.labels(short).inc()
            self.metrics.record(short, "RESOURCE_EXHAUSTED", 0.0)

        interceptors = []
        if cfg.token:
            from service.auth import TokenAuthInterceptor

            interceptors.append(TokenAuthInterceptor(
                cfg.token, on_reject=lambda m: self.metrics.record(m.rsplit("/", 1)[-1], "UNAUTHENTICATED", 0.0)))
        interceptors.append(AdmissionInterceptor(
            {prefix + "Predict": Route(self.budgets["Predict"]),
             prefix + "PredictStream": Route(self.budgets["PredictStream"], per_peer=True),
             prefix + "Explain": Route(self.budgets["Explain"])},
            default=Route(self.budgets["other"], per_peer=True), on_reject=rejected))
        options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                   ("grpc.max_send_message_length", cfg.max_message_bytes),
                   ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
                   # No BDP-driven window growth: a stream gets bytes only as its message is read, so a
                   # request the memory budget has not admitted yet waits on the client, not in here.
                   ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1 << 16)]
        # Budgets (above) decide who is served; the pool is larger than their sum, so a health check
        # always finds a thread. gRPC's own limit stays only as a backstop against a flood of calls.
        self._pool = futures.ThreadPoolExecutor(max_workers=cfg.pool_threads, thread_name_prefix="naslung-rpc")
        self.server = grpc.server(self._pool, interceptors=interceptors, options=options,
                                  maximum_concurrent_rpcs=cfg.pool_threads + 256)
        # unary requests are read only with a receive slot: at most receive_slots messages arrive at once
        self.receive_budget = ByteBudget(max(1, cfg.receive_slots) * cfg.max_message_bytes)
        handlers = _rpc_handlers(self.servicer, self.bytes_budget, cfg.request_memory_factor,
                                 receive_budget=self.receive_budget, receive_bytes=cfg.max_message_bytes,
                                 bound_s=cfg.max_call_s)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        if hasattr(self.server, "add_registered_method_handlers"):  # grpcio >= 1.63: faster method lookup
            self.server.add_registered_method_handlers(SERVICE_NAME, handlers)
        self.health = self._add_health()
        self.reflection = self._add_reflection()
        self.health_server = self._health_only_server()
        self.health_port: int | None = None
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

    def _health_only_server(self) -> grpc.Server | None:
        """A second, plaintext listener serving only grpc.health.v1, sharing the main server's health state.

        Kubernetes' native ``grpc:`` probe cannot speak TLS (the kubelet dials without credentials),
        so a TLS server would fail its own probes. This port answers health checks only -- no
        predictions, no reflection -- and reports exactly what the main port reports (SERVING once the
        model is warm, NOT_SERVING while draining), so it exposes nothing a token or TLS protects.
        """
        cfg = self.config
        if cfg.health_port is None:
            return None
        if self.health is None:
            raise ValueError("--health-port needs grpcio-health-checking (grpc.health.v1), which is not installed")
        from grpc_health.v1 import health_pb2_grpc

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=HEALTH_RESERVE_THREADS,
                                                        thread_name_prefix="naslung-health"),
                             options=[("grpc.so_reuseport", 1 if cfg.reuse_port else 0)],
                             maximum_concurrent_rpcs=4 * HEALTH_RESERVE_THREADS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

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
            if cfg.token and not is_loopback(cfg.host):
                log.warning("bearer token without TLS on %s: the token crosses the network in clear text", cfg.host)
            port = self.server.add_insecure_port(address)
        if not port:
            raise OSError(f"cannot bind {address} (in use or not a local address)")
        self.port = port
        if self.health_server is not None:
            hport = self.health_server.add_insecure_port(_format_address(cfg.host, cfg.health_port))
            if not hport:
                raise OSError(f"cannot bind the health port {_format_address(cfg.host, cfg.health_port)}")
            self.health_port = hport
            self.health_server.start()
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
        if self.health_server is not None:
            self.health_server.stop(0).wait()
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
