"""What the server runs: a small ``Predictor`` protocol and its implementation over an ensemble.

The server never touches training code. It needs only: the crop spec (to validate and resample
input), a version string, a manifest to report, and ``predict(crops_hu) -> BatchPrediction`` on a
batch of HU crops. :class:`EnsemblePredictor` wraps a ``naslung.ensemble`` Ensemble: one
``member_proba`` call per batch (on the fast engine when asked), combined with the bundle's rule,
so member and ensemble probabilities come from the same forward pass.

On CUDA with the fast engine (``torch.compile`` + CUDA graphs, one per input shape), batches are
padded up to a few bucket sizes (powers of two up to ``max_batch``) so a server compiles a handful
of shapes at warm-up instead of one per batch size it happens to see.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from naslung.data.spec import CropSpec

log = logging.getLogger(__name__)

ENGINES = ("auto", "naive", "fast")


@dataclass
class BatchPrediction:
    proba: np.ndarray         # (N, 2) float32, ensemble
    member_proba: np.ndarray  # (M, N, 2) float32


@runtime_checkable
class Predictor(Protocol):
    spec: CropSpec
    version: str
    member_names: Sequence[str]
    threshold: float
    lock: threading.RLock  # held around every forward pass

    def info(self) -> dict[str, Any]: ...

    def predict(self, crops_hu: np.ndarray) -> BatchPrediction: ...


def bucket_sizes(max_batch: int) -> list[int]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class EnsemblePredictor:
    """A ``naslung.ensemble`` Ensemble (or anything with ``member_proba``, ``rule``, ``weights``,
    ``member_names``, ``spec``, ``manifest``) as a server predictor."""

    threshold = 0.5  # malignant iff P(malignant) > threshold, as naslung.ensemble.rules.decide

    def __init__(self, ensemble: Any, *, device: str = "cpu", engine: str = "naive", max_batch: int = 32,
                 engine_options: dict[str, Any] | None = None) -> None:
        import torch

        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.device = torch.device(device)
        self.ensemble = ensemble.to(self.device).eval() if hasattr(ensemble, "to") else ensemble
        self.spec: CropSpec = ensemble.spec
        self.member_names = list(ensemble.member_names)
        self.rule = getattr(ensemble, "rule", "mean")
        self.weights = getattr(ensemble, "weights", None)
        self.manifest: dict[str, Any] = dict(getattr(ensemble, "manifest", {}) or {})
        self.version = str(self.manifest.get("version") or getattr(ensemble, "version", "") or "unversioned")
        self.lock = threading.RLock()
        self.explain_target = ensemble  # gradients and hooks need the plain modules
        self.runner = ensemble
        self.engine = "naive"
        if engine in ("auto", "fast") and hasattr(ensemble, "fast"):
            try:
                self.runner = ensemble.fast(self.device, **(engine_options or {}))
                self.engine = "fast"
            except Exception as e:  # the reference path always works; say why the fast one did not
                if engine == "fast":
                    raise
                log.warning("fast inference engine unavailable (%s: %s); using the reference ensemble",
                            type(e).__name__, e)
        self.buckets = bucket_sizes(max_batch) if (self.engine == "fast" and self.device.type == "cuda") else None

    def info(self) -> dict[str, Any]:
        members = self.manifest.get("members") or [{"name": n} for n in self.member_names]
        return {"version": self.version, "rule": self.rule, "weights": self.weights, "members": members,
                "crop_spec": self.spec.to_dict(), "threshold": self.threshold, "manifest": self.manifest,
                "engine": self.engine, "device": str(self.device)}

    def _padded(self, n: int) -> int:
        if not self.buckets:
            return n
        return next((b for b in self.buckets if b >= n), n)

    def predict(self, crops_hu: np.ndarray) -> BatchPrediction:
        """Probabilities for a batch of HU crops (N, S, S, S), any real dtype."""
        import torch

        from naslung.ensemble.rules import combine

        if crops_hu.ndim != 4 or tuple(crops_hu.shape[1:]) != self.spec.shape:
            raise ValueError(f"batch must be (N, {self.spec.size}, {self.spec.size}, {self.spec.size}), "
                             f"got {crops_hu.shape}")
        n = crops_hu.shape[0]
        with self.lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops_hu))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = self.spec.normalize_torch(x).unsqueeze(1)
            pad = self._padded(n) - n
            if pad:
                x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
            member = self.runner.member_proba(x).float()[:, :n]
            proba = combine(member, self.rule, self.weights)
            out = torch.cat([proba.unsqueeze(0), member]).cpu().numpy()
        return BatchPrediction(proba=out[0], member_proba=out[1:])

    def warmup(self) -> None:
        """Run every batch shape the server will use once (compiles/captures on the fast CUDA engine)."""
        for b in self.buckets or [1]:
            self.predict(np.full((b, *self.spec.shape), self.spec.pad_hu, dtype=np.float32))


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 / AMX), where bf16 pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def engine_options_for(precision: str, device: str = "cpu") -> dict[str, Any]:
    """Fast-engine options for a ``--precision`` choice.

    ``auto`` serves in bf16 where the hardware has bf16 arithmetic -- CUDA, and CPUs with
    AVX512-BF16 or AMX, where it is ~2.5x faster at batch 1 -- and in fp32 elsewhere. bf16
    probabilities stay within 1e-2 of fp32 (tested); ``--precision fp32`` forces exact fp32.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if str(device).startswith("cuda"):
            return {}  # the engine's CUDA default is bf16
        precision = "bf16" if cpu_has_bf16() else "fp32"
    return {"dtype": {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]}


def load_predictor(bundle_dir: str | Path, device: str = "cpu", *, engine: str = "auto",
                   max_batch: int = 32, engine_options: dict[str, Any] | None = None) -> EnsemblePredictor:
    """Verify and load a bundle (``naslung.ensemble.load_bundle``) as a server predictor."""
    from naslung.ensemble import load_bundle

    return EnsemblePredictor(load_bundle(bundle_dir, device=device), device=device, engine=engine,
                             max_batch=max_batch, engine_options=engine_options)


def random_ensemble(model_names: Sequence[str], seed: int = 0):
    """An untrained ensemble of registry models: for load and smoke tests, never for answers."""
    import torch

    from naslung.ensemble.naive import Ensemble
    from naslung.models import build_model, get_config

    torch.manual_seed(seed)
    cfgs = [get_config(n) for n in model_names]
    sizes = {c.in_size for c in cfgs}
    if len(sizes) != 1:
        raise ValueError(f"members disagree on input size: {sorted(sizes)}")
    names = [f"{n}-{i}" for i, n in enumerate(model_names)]
    manifest = {"version": f"random-{seed}", "note": "untrained weights (load test only)",
                "members": [{"name": nm, "config": c.to_dict(), "metrics": {}} for nm, c in zip(names, cfgs)],
                "rule": {"name": "mean", "weights": None}}
    return Ensemble([build_model(c).eval() for c in cfgs], names=names, configs=cfgs,
                    spec=CropSpec(size=sizes.pop()), rule="mean", manifest=manifest)


def random_predictor(model_names: Sequence[str], device: str = "cpu", seed: int = 0, engine: str = "naive",
                     max_batch: int = 32) -> EnsemblePredictor:
    return EnsemblePredictor(random_ensemble(model_names, seed), device=device, engine=engine, max_batch=max_batch)
