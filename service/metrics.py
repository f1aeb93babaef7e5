"""Prometheus metrics of one server, in its own ``CollectorRegistry`` (no global state, so tests and
several servers in one process never share counters).

    naslung_requests_total{method, code}          RPCs (stream items count under PredictStreamItem)
    naslung_request_latency_seconds{method}       server time per RPC / stream item
    naslung_batch_size                            crops per forward pass
    naslung_inference_seconds                     model time per batch
    naslung_queue_depth                           crops waiting for a batch
    naslung_dropped_expired_total{stage}          work dropped unrun because its deadline passed (stage:
                                                  before_crop, queued, batch (would finish too late),
                                                  explain_wait, explain_run)
    naslung_wasted_crops_total                    crops the model ran for a caller already gone
    naslung_inflight_requests                     RPCs being handled
    naslung_inflight_bytes                        request bytes (charged, see service.admission) in flight
    naslung_admission_rejected_total{method}      calls refused by a budget (RESOURCE_EXHAUSTED)

``naslung_requests_total`` counts what the client received: a handler that finishes after its
client's deadline counts DEADLINE_EXCEEDED (CANCELLED if the client cancelled), never OK.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (.001, .0025, .005, .01, .02, .035, .05, .075, .1, .25, .5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Null:
    """Stands in for a metric when prometheus-client is missing: every call is a no-op."""

    def labels(self, *a, **k) -> "_Null":
        return self

    def inc(self, *a, **k) -> None: ...
    def dec(self, *a, **k) -> None: ...
    def set(self, *a, **k) -> None: ...
    def observe(self, *a, **k) -> None: ...


class Metrics:
    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as e:
            log.warning("prometheus-client is not installed (%s): metrics are disabled", e)
            self.registry = None
            self.requests = self.latency = self.batch_size = self.inference_seconds = _Null()
            self.queue_depth = self.dropped_expired = self.inflight = _Null()
            self.wasted_crops = self.inflight_bytes = self.admission_rejected = _Null()
            self._http = None
            return

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("naslung_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("naslung_request_latency_seconds", "Server-side latency per RPC or stream item",
                                 ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("naslung_batch_size", "Crops per model forward pass",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram("naslung_inference_seconds", "Model time per batch",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("naslung_queue_depth", "Crops waiting for a batch", registry=r)
        self.dropped_expired = Counter("naslung_dropped_expired", "Work dropped unrun because its deadline passed",
                                       ["stage"], registry=r)
        self.wasted_crops = Counter("naslung_wasted_crops", "Crops the model ran for a caller already gone",
                                    registry=r)
        self.inflight_bytes = Gauge("naslung_inflight_bytes", "Charged request bytes in flight", registry=r)
        self.admission_rejected = Counter("naslung_admission_rejected", "Calls refused by a concurrency budget",
                                          ["method"], registry=r)
        self.inflight = Gauge("naslung_inflight_requests", "RPCs being handled", registry=r)
        self._http = None
        self._thread = None

    def expired(self, stage: str, n: int = 1) -> None:
        self.dropped_expired.labels(stage).inc(n)

    def record(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    def exposition(self) -> bytes:
        if self.registry is None:
            return b""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int | None:
        """Expose /metrics over HTTP; returns the bound port (pass 0 for a free one), or None when disabled."""
        if self.registry is None:
            log.warning("metrics port requested but prometheus-client is missing; not serving metrics")
            return None
        from prometheus_client import start_http_server

        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._http.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
