"""Dynamic batching: requests from many RPCs ride one forward pass.

One worker thread owns the model. It waits for the first queued item, then up to ``max_delay_s``
more for others, until ``max_batch`` are ready; items whose deadline has passed (or whose caller
gave up and cancelled the future) are dropped *before* the forward pass, so a backlog of dead work
never costs model time. Because a batch takes time, "not yet expired" is not enough: the worker
keeps a running estimate of the model time per crop, drops an item that could not finish before
its deadline even alone, and cuts a batch to the size whose estimated time still meets the
deadlines of the items in it (the others go back to the head of the queue). With 200 ms deadlines
on a CPU this is the difference between computing hundreds of answers nobody receives and
answering the requests that can still be answered. The queue is bounded: :meth:`DynamicBatcher.submit` raises
:class:`QueueFull` instead of letting latency grow without limit (the server answers
RESOURCE_EXHAUSTED).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.predictor import BatchPrediction

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batch queue holds ``max_queue`` items already."""


class DeadlineExpired(Exception):
    """The item's deadline passed while it waited; it was dropped without running."""


class BatcherClosed(Exception):
    """The batcher is shutting down and accepts no new work."""


@dataclass
class ItemResult:
    proba: np.ndarray         # (2,)
    member_proba: np.ndarray  # (M, 2)
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Item:
    crop: np.ndarray
    deadline: float | None  # time.monotonic() value
    enqueued: float
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 32
    max_delay_s: float = 0.002
    max_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.max_delay_s >= 0:
            raise ValueError(f"max_delay must be >= 0, got {self.max_delay_s}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")


class DynamicBatcher:
    """Collects crops from concurrent callers into batches for ``predict_fn``."""

    def __init__(self, predict_fn: Callable[[np.ndarray], BatchPrediction], config: BatchConfig = BatchConfig(),
                 metrics=None) -> None:
        self._predict = predict_fn
        self.config = config
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.n_dropped_expired = 0
        self.n_run = 0
        self._per_crop_s: float | None = None  # EWMA of model seconds per crop (None = not measured yet)
        self._thread = threading.Thread(target=self._loop, name="naslung-batcher", daemon=True)
        self._thread.start()

    # -- callers --------------------------------------------------------------------------------
    def submit(self, crop: np.ndarray, deadline: float | None = None) -> Future:
        """Queue one crop; the future resolves to an :class:`ItemResult` (or DeadlineExpired)."""
        item = _Item(crop=crop, deadline=deadline, enqueued=time.monotonic())
        with self._cond:
            if self._closing:
                raise BatcherClosed("server is shutting down")
            if len(self._queue) >= self.config.max_queue:
                raise QueueFull(f"batch queue is full ({self.config.max_queue} waiting); retry later")
            self._queue.append(item)
            self._set_depth(len(self._queue))
            self._cond.notify()
        return item.future

    def estimate_s(self, n: int) -> float:
        """Estimated model time of a batch of ``n`` (0 until a batch has been measured)."""
        return 0.0 if self._per_crop_s is None else self._per_crop_s * n

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish what is queued, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- worker ---------------------------------------------------------------------------------
    def _set_depth(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(n)

    def _next_batch(self) -> list[_Item] | None:
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            # Wait for more items until the batch is full or the oldest item has waited max_delay.
            flush_at = self._queue[0].enqueued + cfg.max_delay_s
            while len(self._queue) < cfg.max_batch and not self._closing:
                left = flush_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(cfg.max_batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._set_depth(len(self._queue))
        return batch

    def _drop_expired(self, it: _Item, stage: str) -> None:
        self.n_dropped_expired += 1
        if self._metrics is not None:
            self._metrics.expired(stage)
        it.future.set_exception(DeadlineExpired("deadline passed before the model could answer "
                                                f"({'while queued' if stage == 'queued' else 'it would finish too late'})"))

    def _fit(self, live: list[_Item], now: float) -> list[_Item]:
        """The largest subset whose estimated batch time meets every member's deadline: the items
        with the most time left; the rest go back to the head of the queue."""
        if self._per_crop_s is None or len(live) <= 1:
            return live
        left = sorted(live, key=lambda it: -(it.deadline - now) if it.deadline is not None else -float("inf"))
        n = len(left)
        while n > 1 and left[n - 1].deadline is not None and left[n - 1].deadline - now < self.estimate_s(n):
            n -= 1
        keep, back = left[:n], left[n:]
        if back:
            with self._cond:
                for it in sorted(back, key=lambda it: it.enqueued, reverse=True):
                    self._queue.appendleft(it)
                self._set_depth(len(self._queue))
        keep.sort(key=lambda it: it.enqueued)
        return keep

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            now = time.monotonic()
            live: list[_Item] = []
            for it in batch:
                if it.future.cancelled():
                    continue  # the caller gave up (deadline or cancellation) and cancelled it
                if it.deadline is not None and now >= it.deadline:
                    if it.future.set_running_or_notify_cancel():
                        self._drop_expired(it, "queued")
                    continue
                if it.deadline is not None and it.deadline - now < self.estimate_s(1):
                    if it.future.set_running_or_notify_cancel():
                        self._drop_expired(it, "batch")
                    continue
                live.append(it)
            live = [it for it in self._fit(live, now) if it.future.set_running_or_notify_cancel()]
            if not live:
                continue
            t0 = time.monotonic()
            try:
                out = self._predict(np.stack([it.crop for it in live]))
            except Exception as e:  # a model error fails this batch, never the worker
                log.exception("batch of %d failed", len(live))
                for it in live:
                    it.future.set_exception(e)
                continue
            dt = time.monotonic() - t0
            per = dt / len(live)
            self._per_crop_s = per if self._per_crop_s is None else 0.7 * self._per_crop_s + 0.3 * per
            self.n_run += len(live)
            if self._metrics is not None:
                self._metrics.batch_size.observe(len(live))
                self._metrics.inference_seconds.observe(dt)
            for i, it in enumerate(live):
                it.future.set_result(ItemResult(proba=out.proba[i], member_proba=out.member_proba[:, i],
                                                queue_s=t0 - it.enqueued, inference_s=dt, batch_size=len(live)))
