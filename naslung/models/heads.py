"""Classification heads: plain softmax, A-Softmax (SphereFace) and AM-Softmax.

Every head answers two questions:

* ``forward(emb) -> logits`` -- the *inference* logits, used for probabilities by everybody
  (ensembles, Captum, the server). Angular heads return ``|x| cos(theta)`` (A-Softmax) or
  ``s cos(theta)`` (AM-Softmax), so all heads are read the same way.
* ``margin_logits(emb, target, ...)`` -- the logits whose cross-entropy is the *training* loss,
  with the margin applied to the target class.

A-Softmax (Liu et al., SphereFace, CVPR 2017) replaces the target logit ``|x| cos(theta)`` with
``|x| (lambda cos(theta) + psi(theta)) / (1 + lambda)`` where
``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta`` in ``[k pi/m, (k+1) pi/m]``, and lambda is
annealed from ``start`` (1500) down to ``floor`` (5) so that training starts as plain softmax and
ends with most of the margin.

SphereFace anneals per iteration (``max(5, 1500 / (1 + 0.1 it))``), which assumes hundreds of
thousands of iterations. A 505-nodule dataset gives ~10 steps an epoch: after 60 epochs that
schedule is still at lambda ~ 25, so the margin carries ~4 % of the target logit and ``m`` is an
inert knob. :class:`LambdaSchedule` therefore anneals by *fraction of training*: the same
hyperbolic shape, reaching the floor at ``floor_at`` (default half) of the planned steps, whatever
their number. The trainer passes the scheduled lambda to ``margin_logits(lam=...)``.
(The NAS-Lung seed's AngleLoss built an all-zero index mask, so its margin never reached the loss;
here it does, and tests check it numerically.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("asoftmax", "softmax", "amsoftmax")
DEFAULT_ASOFTMAX_M = 4
DEFAULT_AM_MARGIN = 0.35
DEFAULT_AM_SCALE = 30.0


@dataclass(frozen=True)
class LambdaSchedule:
    """A-Softmax's lambda by fraction of training: ``max(floor, start / (1 + k t))``, t = step / total.

    ``k`` is chosen so that lambda reaches ``floor`` at ``t = floor_at`` and stays there: with
    ``floor_at = 0.5`` the second half of training runs with the full margin, for 10 epochs or 1000.

    Args:
        start: lambda at step 0 (SphereFace: 1500; large = plain softmax).
        floor: the smallest lambda (SphereFace: 5; the target logit is then
            ``(5 cos + psi) / 6``: ~17 % margin).
        floor_at: fraction of ``total_steps`` at which the floor is reached, in (0, 1].
        total_steps: the planned number of optimiser steps (epochs x batches per epoch).

    Raises:
        ValueError: on a floor above the start, a non-positive floor or total, or floor_at outside (0, 1].
    """

    start: float = 1500.0
    floor: float = 5.0
    floor_at: float = 0.5
    total_steps: int = 1

    def __post_init__(self) -> None:
        if not (self.floor > 0 and self.start >= self.floor):
            raise ValueError(f"A-Softmax lambda needs start >= floor > 0, got start={self.start}, floor={self.floor}")
        if not 0 < self.floor_at <= 1:
            raise ValueError(f"A-Softmax lambda floor_at must be in (0, 1], got {self.floor_at}")
        if self.total_steps < 1:
            raise ValueError(f"A-Softmax lambda schedule needs total_steps >= 1, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        t = max(0.0, step / self.total_steps)
        k = (self.start / self.floor - 1.0) / self.floor_at
        return max(self.floor, self.start / (1.0 + k * t))


def margin_share(lam: float) -> float:
    """The share of the target logit that is the margin term psi: ``1 / (1 + lam)``."""
    return 1.0 / (1.0 + lam)


def chebyshev_cos_m(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) as the Chebyshev polynomial T_m(cos theta): exact, with finite gradients."""
    t_prev, t = torch.ones_like(cos), cos
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t = t, 2 * cos * t - t_prev
    return t


def psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """SphereFace's monotone extension psi(theta) = (-1)^k cos(m theta) - 2k, from cos(theta)."""
    theta = torch.acos(cos.detach().clamp(-1.0, 1.0))
    k = torch.floor(m * theta / math.pi).clamp_(0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev_cos_m(cos, m) - 2.0 * k


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


class SoftmaxHead(nn.Module):
    """A plain linear layer; the margin logits are the ordinary logits."""

    kind = "softmax"

    def __init__(self, in_features: int, num_classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        with _no_autocast(emb.device.type):
            return self.fc(emb.float())

    def margin_logits(self, emb: torch.Tensor, target: torch.Tensor, *, step: int | None = None,
                      lam: float | None = None) -> torch.Tensor:
        return self(emb)


class _CosineHead(nn.Module):
    """Shared part of the angular heads: class weights on the unit sphere, no bias."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def cos_and_norm(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos(theta) (N, C) between features and class weights, and |x| (N, 1)."""
        x = emb.float()
        norm = x.norm(dim=1, keepdim=True)
        cos = F.linear(x / norm.clamp_min(1e-12), F.normalize(self.weight, dim=1))
        return cos.clamp(-1.0, 1.0), norm


class ASoftmaxHead(_CosineHead):
    """SphereFace A-Softmax with multiplicative angular margin m and annealed lambda."""

    kind = "asoftmax"

    def __init__(self, in_features: int, num_classes: int = 2, m: int = DEFAULT_ASOFTMAX_M,
                 lam_max: float = 1500.0, lam_min: float = 5.0, lam_decay: float = 0.1) -> None:
        super().__init__(in_features, num_classes)
        if int(m) != m or m < 1:
            raise ValueError(f"A-Softmax margin m must be a positive integer, got {m}")
        self.m = int(m)
        self.lam_max, self.lam_min, self.lam_decay = float(lam_max), float(lam_min), float(lam_decay)

    def lambda_at(self, step: int) -> float:
        """SphereFace's per-iteration schedule, max(lam_min, lam_max / (1 + decay * step)); the
        trainer uses :class:`LambdaSchedule` instead and passes ``lam`` (see the module docstring)."""
        return max(self.lam_min, self.lam_max / (1.0 + self.lam_decay * step))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        with _no_autocast(emb.device.type):
            cos, norm = self.cos_and_norm(emb)
            return cos * norm

    def margin_logits(self, emb: torch.Tensor, target: torch.Tensor, *, step: int | None = None,
                      lam: float | None = None) -> torch.Tensor:
        """Logits with the target replaced by |x| (lam cos + psi) / (1 + lam).

        ``lam`` wins over ``step``; with neither, lambda is ``lam_min`` (margin fully annealed).
        """
        if lam is None:
            lam = self.lam_min if step is None else self.lambda_at(step)
        with _no_autocast(emb.device.type):
            cos, norm = self.cos_and_norm(emb)
            onehot = F.one_hot(target.long(), cos.shape[1]).to(cos.dtype)
            target_cos = (lam * cos + psi(cos, self.m)) / (1.0 + lam)
            return norm * (cos + onehot * (target_cos - cos))


class AMSoftmaxHead(_CosineHead):
    """Additive cosine margin (AM-Softmax / CosFace): s (cos theta - m) for the target class."""

    kind = "amsoftmax"

    def __init__(self, in_features: int, num_classes: int = 2, margin: float = DEFAULT_AM_MARGIN,
                 scale: float = DEFAULT_AM_SCALE) -> None:
        super().__init__(in_features, num_classes)
        if not 0 <= margin < 1:
            raise ValueError(f"AM-Softmax margin must be in [0, 1), got {margin}")
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        with _no_autocast(emb.device.type):
            cos, _ = self.cos_and_norm(emb)
            return self.scale * cos

    def margin_logits(self, emb: torch.Tensor, target: torch.Tensor, *, step: int | None = None,
                      lam: float | None = None) -> torch.Tensor:
        with _no_autocast(emb.device.type):
            cos, _ = self.cos_and_norm(emb)
            onehot = F.one_hot(target.long(), cos.shape[1]).to(cos.dtype)
            return self.scale * (cos - self.margin * onehot)


def make_head(kind: str, in_features: int, num_classes: int = 2, margin: float | None = None,
              scale: float | None = None) -> nn.Module:
    """The head named ``kind``; ``margin``/``scale`` None means the head's published default."""
    if kind == "softmax":
        return SoftmaxHead(in_features, num_classes)
    if kind == "asoftmax":
        return ASoftmaxHead(in_features, num_classes, m=int(margin) if margin is not None else DEFAULT_ASOFTMAX_M)
    if kind == "amsoftmax":
        return AMSoftmaxHead(in_features, num_classes,
                             margin=DEFAULT_AM_MARGIN if margin is None else float(margin),
                             scale=DEFAULT_AM_SCALE if scale is None else float(scale))
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
