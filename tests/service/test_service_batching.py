"""DynamicBatcher: concurrent submits share batches, the queue is bounded, dead work never runs."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.batching import BatchConfig, BatcherClosed, DeadlineExpired, DynamicBatcher, QueueFull
from service.predictor import BatchPrediction


class Recorder:
    """A fake model: P(malignant) = mean voxel value; records batch sizes; optional gate/sleep."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.seen: list[float] = []
        self.delay, self.gate = delay, gate
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray) -> BatchPrediction:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay)
        self.sizes.append(len(x))
        p = x.reshape(len(x), -1).mean(1)
        self.seen.extend(p.tolist())
        proba = np.stack([1 - p, p], 1).astype(np.float32)
        return BatchPrediction(proba, np.stack([proba, proba]))


def _crop(v: float) -> np.ndarray:
    return np.full((2, 2, 2), v, np.float32)


def test_results_go_back_to_their_callers_and_batches_form():
    rec = Recorder(delay=0.01)
    b = DynamicBatcher(rec, BatchConfig(max_batch=8, max_delay_s=0.05, max_queue=100))
    futs = [b.submit(_crop(i / 100)) for i in range(20)]
    res = [f.result(5) for f in futs]
    b.close()
    for i, r in enumerate(res):
        assert r.proba[1] == pytest.approx(i / 100) and r.member_proba.shape == (2, 2)
    assert sum(rec.sizes) == 20 and max(rec.sizes) == 8 and len(rec.sizes) < 20


def test_lone_request_waits_at_most_max_delay():
    rec = Recorder()
    b = DynamicBatcher(rec, BatchConfig(max_batch=64, max_delay_s=0.05))
    t0 = time.monotonic()
    r = b.submit(_crop(0.5)).result(5)
    dt = time.monotonic() - t0
    b.close()
    assert 0.04 <= dt < 1.0 and r.batch_size == 1 and r.queue_s >= 0.04


def test_bounded_queue_raises_queue_full():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = DynamicBatcher(rec, BatchConfig(max_batch=1, max_delay_s=0, max_queue=2))
    first = b.submit(_crop(0.1))
    assert rec.entered.wait(5)  # the worker holds item 1; the queue is empty again
    b.submit(_crop(0.2)), b.submit(_crop(0.3))
    with pytest.raises(QueueFull):
        b.submit(_crop(0.4))
    gate.set()
    assert first.result(5).proba[1] == pytest.approx(0.1)
    b.close()


def test_expired_and_cancelled_items_are_dropped_before_the_model():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = DynamicBatcher(rec, BatchConfig(max_batch=4, max_delay_s=0, max_queue=10))
    blocker = b.submit(_crop(0.9))
    assert rec.entered.wait(5)
    expired = b.submit(_crop(0.2), deadline=time.monotonic() + 0.01)
    cancelled = b.submit(_crop(0.3))
    live = b.submit(_crop(0.4), deadline=time.monotonic() + 10)
    assert cancelled.cancel()
    time.sleep(0.05)
    gate.set()
    assert live.result(5).proba[1] == pytest.approx(0.4)
    with pytest.raises(DeadlineExpired):
        expired.result(5)
    blocker.result(5)
    b.close()
    assert sorted(rec.seen) == pytest.approx([0.4, 0.9])  # 0.2 and 0.3 never reached the model
    assert b.n_dropped_expired == 1


def test_model_error_fails_the_batch_not_the_worker():
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return Recorder()(x)

    b = DynamicBatcher(flaky, BatchConfig(max_batch=1, max_delay_s=0))
    with pytest.raises(RuntimeError, match="boom"):
        b.submit(_crop(0.1)).result(5)
    assert b.submit(_crop(0.2)).result(5).proba[1] == pytest.approx(0.2)
    b.close()


def test_close_finishes_queued_work_then_refuses():
    rec = Recorder(delay=0.02)
    b = DynamicBatcher(rec, BatchConfig(max_batch=2, max_delay_s=0.01))
    futs = [b.submit(_crop(0.5)) for _ in range(6)]
    b.close(timeout=5)
    assert all(f.done() and f.exception() is None for f in futs)
    with pytest.raises(BatcherClosed):
        b.submit(_crop(0.5))


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_batch"):
        BatchConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_queue"):
        BatchConfig(max_queue=0)
