"""Explanations the server can stop: a private copy of the models, fixed server-side cost, and a
cancellation check inside every forward pass.

Why: an ``ig,occlusion`` explanation is hundreds of forward passes. A client that gives up after
0.3 s used to leave it running for seconds on the only explanation slot. :class:`Explainer` puts a
forward pre-hook on every module of its private model copy; the hook raises
:class:`ExplainStopped` as soon as the calling RPC's deadline has passed or its client cancelled,
so the work ends within one forward pass. The cost is the server's choice (``ig_steps``, occlusion
window and stride from :class:`ExplainCost`); a client picks methods, never step counts.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

MAX_METHODS_PER_REQUEST = 8


class ExplainStopped(Exception):
    """The explanation was abandoned: deadline passed or the client went away."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "deadline" or "cancelled"


@dataclass(frozen=True)
class ExplainCost:
    """Server-side cost of the expensive methods (clients cannot raise it).

    ``ig_steps`` integration steps (forward + backward each); occlusion with a cube of
    ``occlusion_window`` voxels moved by ``occlusion_stride`` (None = the library default, S/4 and
    S/8: 7^3 = 343 perturbed forwards on a 32^3 crop). ``max_ig_steps`` and
    ``max_occlusion_positions`` are hard caps checked when the server starts.
    """

    ig_steps: int = 32
    occlusion_window: int | None = None
    occlusion_stride: int | None = None
    max_ig_steps: int = 64
    max_occlusion_positions: int = 1000

    def check(self, crop_size: int) -> None:
        if not 1 <= self.ig_steps <= self.max_ig_steps:
            raise ValueError(f"explain ig_steps {self.ig_steps} outside 1..{self.max_ig_steps}")
        n = self.occlusion_positions(crop_size)
        if n > self.max_occlusion_positions:
            raise ValueError(f"occlusion window {self.occlusion_window} / stride {self.occlusion_stride} on a "
                             f"{crop_size}^3 crop means {n} forward passes, over the cap of "
                             f"{self.max_occlusion_positions}")

    def occlusion_positions(self, size: int) -> int:
        window = self.occlusion_window or max(2, size // 4)
        stride = self.occlusion_stride or max(1, window // 2)
        if not 1 <= window <= size or stride < 1:
            raise ValueError(f"occlusion window {window} / stride {stride} does not fit a {size}^3 crop")
        return ((size - window) // stride + 1) ** 3

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"ig_steps": self.ig_steps}
        if self.occlusion_window:
            opts["occlusion_window"] = self.occlusion_window
        if self.occlusion_stride:
            opts["occlusion_stride"] = self.occlusion_stride
        return opts


class _Token:
    def __init__(self, deadline: float | None, cancelled: Callable[[], bool]) -> None:
        self.deadline, self.cancelled = deadline, cancelled

    def check(self) -> None:
        if self.cancelled():
            raise ExplainStopped("cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise ExplainStopped("deadline")


class Explainer:
    """Explains crops on a deep copy of ``target`` (the predictor's plain modules): its hooks and
    gradients never touch the copy the batcher runs."""

    def __init__(self, target: Any, cost: ExplainCost = ExplainCost()) -> None:
        import torch

        self.target = copy.deepcopy(target)
        self.cost = cost
        self._local = threading.local()
        modules = self.target.modules() if isinstance(self.target, torch.nn.Module) else ()
        self._hooks = [m.register_forward_pre_hook(self._check) for m in modules]
        if not self._hooks:
            log.warning("explanation target %s has no modules to hook: explanations cannot be stopped early",
                        type(self.target).__name__)

    def _check(self, module, inputs) -> None:
        token = getattr(self._local, "token", None)
        if token is not None:
            token.check()

    def explain(self, crop: np.ndarray, spec, methods: Sequence[str], *, deadline: float | None,
                cancelled: Callable[[], bool] = lambda: False) -> list:
        """The combined maps, or :class:`ExplainStopped` once ``deadline`` (monotonic) passes or
        ``cancelled()`` turns true -- checked before starting and inside every forward pass."""
        from naslung.explain.core import explain

        token = _Token(deadline, cancelled)
        token.check()  # never start work that is already dead
        self._local.token = token
        try:
            return explain(self.target, crop, spec, methods, **self.cost.options()).maps
        finally:
            self._local.token = None
