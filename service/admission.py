"""Admission control: every class of call gets its own budget, and requests their share of memory.

Why: gRPC's ``maximum_concurrent_rpcs`` is one pool for everything, so 64 idle ``PredictStream``
calls from one client used to turn every other call -- the health check included -- into
RESOURCE_EXHAUSTED. Here each method has its own :class:`SlotBudget` (``PredictStream`` also a cap
per peer), checked *before* the handler runs by :class:`AdmissionInterceptor`; health checks are
never counted, and the server's thread pool is sized above the sum of the budgets so a check always
finds a thread.

:class:`ByteBudget` bounds the memory that requests being processed may pin: each request is
charged its wire size times an expansion factor (decoding + resampling a volume costs several times
its bytes) before it is parsed; a request that does not fit is refused with RESOURCE_EXHAUSTED
instead of pushing the process past its memory ceiling.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import grpc

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class SlotBudget:
    """At most ``limit`` holders at once, and at most ``per_key`` with the same key (a peer)."""

    def __init__(self, name: str, limit: int, per_key: int | None = None) -> None:
        if limit < 1 or (per_key is not None and per_key < 1):
            raise ValueError(f"budget {name}: limits must be >= 1, got {limit} / {per_key}")
        self.name, self.limit, self.per_key = name, limit, per_key
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._n = 0
        self._by_key: dict[str, int] = {}
        self.waiting = 0  # callers blocked in acquire()

    def _why_not(self, key: str) -> str | None:
        if self._n >= self.limit:
            return f"{self.name}: {self.limit} concurrent call(s) already running (the server's limit); retry with backoff"
        if self.per_key is not None and self._by_key.get(key, 0) >= self.per_key:
            return (f"{self.name}: this client address already has {self.per_key} open call(s) (on any "
                    f"number of connections), the per-client limit; close one or send more requests on an "
                    f"open stream")
        return None

    def try_acquire(self, key: str = "") -> str | None:
        """None when admitted; else why not (for the RESOURCE_EXHAUSTED message)."""
        with self._lock:
            why = self._why_not(key)
            if why is None:
                self._n += 1
                self._by_key[key] = self._by_key.get(key, 0) + 1
            return why

    def acquire(self, key: str = "", timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` s for a slot (woken by release, not by polling); True if taken."""
        end = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self.waiting += 1
            try:
                while self._why_not(key) is not None:
                    left = end - time.monotonic()
                    if left <= 0:
                        return False
                    self._freed.wait(left)
                self._n += 1
                self._by_key[key] = self._by_key.get(key, 0) + 1
                return True
            finally:
                self.waiting -= 1

    def release(self, key: str = "") -> None:
        with self._lock:
            self._n -= 1
            left = self._by_key.get(key, 1) - 1
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)
            self._freed.notify_all()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._n


class ByteTicket:
    """A reservation on a :class:`ByteBudget`; ``release()`` is idempotent and also runs when the
    ticket is garbage-collected, so a request dropped anywhere never leaks its bytes."""

    def __init__(self, budget: "ByteBudget", n: int) -> None:
        self._budget, self.n = budget, n

    def release(self) -> None:
        b, self._budget = self._budget, None
        if b is not None:
            b._give_back(self.n)

    def __del__(self) -> None:
        self.release()


class ByteBudget:
    """Bytes that requests being processed may pin, at most ``limit``.

    One request larger than the whole budget is still admitted when nothing else is in flight (the
    message-size limit bounds it), so a valid maximum-size volume is never refused forever.
    """

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"byte budget must be >= 1, got {limit}")
        self.limit = int(limit)
        self._used = 0
        self.peak = 0  # most bytes ever reserved at once (figures, tests)
        self._cond = threading.Condition()
        self._on_change = on_change

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    def try_reserve(self, n: int, timeout: float = 0.0) -> ByteTicket | None:
        """Reserve ``n`` bytes, waiting up to ``timeout`` s for room; None if there is none."""
        n = max(0, int(n))
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._used and self._used + n > self.limit:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            self._used += n
            used = self._used
            self.peak = max(self.peak, used)
        if self._on_change is not None:
            self._on_change(used)
        return ByteTicket(self, n)

    def _give_back(self, n: int) -> None:
        with self._cond:
            self._used -= n
            used = self._used
            self._cond.notify_all()
        if self._on_change is not None:
            self._on_change(used)


def peer_host(peer: str) -> str:
    """The client's address without its port, from gRPC's ``context.peer()``.

    Why not the whole peer string: it names one TCP connection (``ipv4:10.0.0.7:53122``), so a
    client that opens one channel per call -- or 64 channels -- got a fresh per-client allowance on
    each and the per-client caps limited nothing. Keyed by host, every connection from one address
    shares one allowance. Caveat: clients behind one NAT or proxy share an address, hence a cap;
    behind a load balancer that does not preserve client addresses, raise the per-client caps.

    ``ipv4:1.2.3.4:5`` -> ``ipv4:1.2.3.4``; ``ipv6:[::1]:5`` -> ``ipv6:[::1]``; ``ipv6:%5B::1%5D:5``
    (percent-encoded, as some gRPC releases write it) -> ``ipv6:[::1]``; anything else (``unix:``
    sockets, an unknown scheme) is returned whole.
    """
    scheme, sep, rest = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    rest = rest.replace("%5B", "[").replace("%5D", "]").replace("%5b", "[").replace("%5d", "]")
    if scheme == "ipv6" and rest.startswith("["):
        return f"{scheme}:{rest[:rest.index(']') + 1]}" if "]" in rest else peer
    host, colon, port = rest.rpartition(":")
    return f"{scheme}:{host}" if colon and port.isdigit() else peer


@dataclass(frozen=True)
class Route:
    """Which budget a method draws from; ``per_peer`` keys it by the caller's host (:func:`peer_host`)."""

    budget: SlotBudget
    per_peer: bool = False


def _wrap(handler: grpc.RpcMethodHandler, route: Route, on_reject: Callable[[str, str], None], method: str):
    def admit(context) -> tuple[str, Callable[[], None]]:
        key = peer_host(context.peer()) if route.per_peer else ""
        why = route.budget.try_acquire(key)
        if why is not None:
            on_reject(method, why)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                route.budget.release(key)
        context.add_callback(release)  # also when the client goes away mid-call
        return key, release

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def uu(request, context):
            _, release = admit(context)
            try:
                return inner(request, context)
            finally:
                release()
        return grpc.unary_unary_rpc_method_handler(uu, **kw)
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        def ss(request_iterator, context):
            _, release = admit(context)
            try:
                yield from inner_ss(request_iterator, context)
            finally:
                release()
        return grpc.stream_stream_rpc_method_handler(ss, **kw)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        def us(request, context):
            _, release = admit(context)
            try:
                yield from inner_us(request, context)
            finally:
                release()
        return grpc.unary_stream_rpc_method_handler(us, **kw)
    inner_su = handler.stream_unary

    def su(request_iterator, context):
        _, release = admit(context)
        try:
            return inner_su(request_iterator, context)
        finally:
            release()
    return grpc.stream_unary_rpc_method_handler(su, **kw)


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Routes each method (full name, or a ``/package.Service/`` prefix) to its budget before the
    handler runs. The health check is never budgeted; an unrouted method uses ``default``."""

    def __init__(self, routes: Mapping[str, Route], default: Route,
                 on_reject: Callable[[str, str], None] = lambda method, why: None) -> None:
        self._routes = dict(routes)
        self._default = default
        self._on_reject = on_reject

    def _route(self, method: str) -> Route:
        if method in self._routes:
            return self._routes[method]
        for prefix, route in self._routes.items():
            if prefix.endswith("/") and method.startswith(prefix):
                return route
        return self._default

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method == HEALTH_CHECK:
            return handler
        return _wrap(handler, self._route(method), self._on_reject, method)
