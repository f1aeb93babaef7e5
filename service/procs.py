"""Several server processes on one port: past one Python process's RPC ceiling.

One gRPC server process tops out at ~1.6k predictions/s on the H200 box even with no model (its
threads share one GIL while parsing 64-128 KB requests). ``serve_processes`` starts ``procs``
children, each a full :class:`service.server.NoduleServer` (own predictor, batcher and metrics)
bound to the same port with ``SO_REUSEPORT``, so the kernel spreads client connections over them
(Linux). The parent only supervises: it waits until every child is ready, forwards SIGTERM/SIGINT
so each drains its in-flight requests, and restarts a child that dies (kill -9, OOM, a crash) with
exponential backoff (0.5 s doubling to 30 s; reset once a child has served for a minute) while the
others keep the port answering -- one crash is not an outage. A child that cannot start at all
(a bad bundle) stops the group at start-up, as before: that is a configuration error, not a crash.
A child whose parent dies drains and exits by itself.

Health: each child serves grpc.health.v1 on the shared port and reports SERVING only once its
model is loaded and warmed up, so a probe never lands on a half-started replacement; the kernel
sends new connections only to children that are listening, so while one restarts the others answer.

Metrics: with ``metrics_port`` P, child *i* serves its own metrics on P + i.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from service.server import ServerConfig, serve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """What ``on_ready`` gets when several processes serve: the shared port and each child."""

    port: int
    pids: tuple[int, ...]
    metrics_ports: tuple[int | None, ...]
    health_port: int | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_ports[0] if self.metrics_ports else None


def free_port(host: str) -> int:
    """A port free on ``host`` now (the children then bind it together with SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, 0))
        return s.getsockname()[1]


def _watch_parent(parent: int, interval_s: float = 1.0) -> None:
    """Drain this child if its supervisor dies (SIGKILL, OOM): no orphan keeps serving the port."""
    while os.getppid() == parent:
        time.sleep(interval_s)
    log.warning("supervising process %d is gone: draining", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(make_predictor: Callable[[], Any], config: ServerConfig, index: int, ready: Any, parent: int) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"server[{index}] %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="naslung-parent-watch").start()
    try:
        predictor = make_predictor()
    except BaseException as e:  # the parent reports it and stops the others
        ready.put((index, None, None, f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None
    serve(predictor, config, on_ready=lambda s: ready.put((index, s.port, s.metrics_port, None)))


def serve_processes(make_predictor: Callable[[], Any], config: ServerConfig, procs: int,
                    on_ready: Callable[[ProcessGroup], None] | None = None, *, start_timeout_s: float = 600.0,
                    restart_backoff_s: tuple[float, float] = (0.5, 30.0)) -> int:
    """Serve with ``procs`` processes until SIGTERM/SIGINT (main thread only); returns an exit code.

    ``make_predictor`` must be picklable (a module-level function or a ``functools.partial``): each
    child builds its own predictor, so a bundle is loaded and verified once per process.
    """
    if procs < 1:
        raise ValueError(f"procs must be at least 1, got {procs}")
    if procs == 1:
        return serve(make_predictor(), config, on_ready=on_ready)
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("several server processes need SO_REUSEPORT (Linux); use --procs 1")
    port = config.port or free_port(config.host)
    if config.health_port == 0:  # the children share one health port too
        config = replace(config, health_port=free_port(config.host))
    ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or gRPC threads
    ready_q = ctx.Queue()
    children = []
    for i in range(procs):
        mport = None if config.metrics_port is None else (config.metrics_port + i if config.metrics_port else 0)
        cfg = replace(config, port=port, reuse_port=True, metrics_port=mport)
        children.append(ctx.Process(target=_child, args=(make_predictor, cfg, i, ready_q, os.getpid()),
                                    name=f"naslung-serve-{i}"))

    stop = threading.Event()

    def _signal(signum, frame):
        log.warning("received %s: draining %d server processes", signal.Signals(signum).name, procs)
        stop.set()

    old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for c in children:
            c.start()
        metrics: dict[int, int | None] = {}
        deadline = time.monotonic() + start_timeout_s
        while len(metrics) < procs:
            if stop.is_set():
                return _shutdown(children, config.grace_s, 0)
            if time.monotonic() > deadline:
                log.error("server processes not ready after %.0f s", start_timeout_s)
                return _shutdown(children, config.grace_s, 1)
            try:
                index, _, mport, error = ready_q.get(timeout=0.5)
            except queue.Empty:
                dead = [c for c in children if c.exitcode is not None]
                if dead:
                    log.error("server process %s exited with %s before it was ready", dead[0].name,
                              dead[0].exitcode)
                    return _shutdown(children, config.grace_s, 1)
                continue
            if error:
                log.error("server process %d failed to start: %s", index, error)
                return _shutdown(children, config.grace_s, 1)
            metrics[index] = mport
        if on_ready is not None:
            on_ready(ProcessGroup(port, tuple(c.pid for c in children), tuple(metrics[i] for i in range(procs)),
                                  config.health_port))
        return _supervise(ctx, children, make_predictor, config, port, ready_q, stop, restart_backoff_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _supervise(ctx, children: list, make_predictor, config: ServerConfig, port: int, ready_q, stop: threading.Event,
               backoff: tuple[float, float]) -> int:
    """Until ``stop``: restart any child that exits, with per-child exponential backoff."""
    first, cap = backoff
    n = len(children)
    started = [time.monotonic()] * n
    delay = [first] * n
    due: dict[int, float] = {}       # child index -> when to restart it
    restarts = 0
    while not stop.wait(0.2):
        now = time.monotonic()
        try:
            while True:  # ready / failed messages from restarted children
                index, _, _, error = ready_q.get_nowait()
                if error:
                    log.error("restarted server process %d failed to start: %s", index, error)
                else:
                    log.warning("server process %d is serving again (pid %s)", index, children[index].pid)
        except queue.Empty:
            pass
        for i, c in enumerate(children):
            if i in due or c.exitcode is None:
                continue
            if now - started[i] >= 60.0:
                delay[i] = first
            due[i] = now + delay[i]
            log.error("server process %d (pid %s) exited with %s; restarting it in %.1f s (the other %d keep "
                      "serving)", i, c.pid, c.exitcode, delay[i], n - 1)
            delay[i] = min(cap, delay[i] * 2)
        for i, when in list(due.items()):
            if now >= when:
                del due[i]
                mport = None if config.metrics_port is None else (config.metrics_port + i if config.metrics_port else 0)
                cfg = replace(config, port=port, reuse_port=True, metrics_port=mport)
                child = ctx.Process(target=_child, args=(make_predictor, cfg, i, ready_q, os.getpid()),
                                    name=f"naslung-serve-{i}")
                child.start()
                children[i] = child
                started[i] = time.monotonic()
                restarts += 1
    if restarts:
        log.warning("%d server process restart(s) during this run", restarts)
    return _shutdown(children, config.grace_s, 0)


def _shutdown(children: list, grace_s: float, rc: int) -> int:
    """SIGTERM every live child (each drains), wait, then kill stragglers."""
    for c in children:
        if c.pid is not None and c.exitcode is None:
            try:
                os.kill(c.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for c in children:
        if c.pid is not None:
            c.join(grace_s + 15)
            if c.exitcode is None:
                log.error("server process %s did not stop in time: killing it", c.name)
                c.kill()
                c.join(5)
    return rc
