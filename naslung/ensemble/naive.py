"""The reference ensemble: members run one after another in fp32, as NAS-Lung's test.py does.

This is the ground truth the fast engine (:mod:`naslung.ensemble.engine`) is tested against, and
the object :func:`~naslung.ensemble.bundle.load_bundle` returns. It is an ``nn.Module``: ``forward``
keeps autograd (explanations need gradients through the mean / weighted rules), while
:meth:`predict_proba` and :meth:`member_proba` run under ``torch.inference_mode``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from naslung.data.spec import CropSpec
from naslung.ensemble.rules import check_weights, combine
from naslung.models.config import ModelConfig


def member_softmax(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A member's (N, 2) probabilities: softmax of its inference logits, computed in fp32."""
    return torch.softmax(model(x).float(), dim=1)


class Ensemble(nn.Module):
    def __init__(self, models: Sequence[nn.Module], *, names: Sequence[str] | None = None,
                 configs: Sequence[ModelConfig] | None = None, spec: CropSpec | None = None,
                 rule: str = "mean", weights: Sequence[float] | None = None,
                 manifest: dict[str, Any] | None = None, root: Path | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one member")
        self.models = nn.ModuleList(models)
        self.member_names = list(names) if names is not None else [f"m{i}" for i in range(len(models))]
        if len(self.member_names) != len(models):
            raise ValueError(f"{len(self.member_names)} names for {len(models)} members")
        self.configs = list(configs) if configs is not None else []
        self.spec = spec or CropSpec()
        self.rule = rule
        self.weights = check_weights(weights, len(models)).tolist() if weights is not None else None
        combine(torch.full((len(models), 1, 2), 0.5), rule, self.weights)  # validate rule early
        self.manifest = manifest or {}
        self.root = root

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unsaved"))

    def __len__(self) -> int:
        return len(self.models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Combined (N, 2) probabilities, differentiable for the mean and weighted rules."""
        return combine(torch.stack([member_softmax(m, x) for m in self.models]), self.rule, self.weights)

    @torch.inference_mode()
    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, 2) probabilities of every member on normalised input (N, 1, S, S, S)."""
        return torch.stack([member_softmax(m, x) for m in self.models])

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2) probabilities after the combination rule."""
        return combine(self.member_proba(x), self.rule, self.weights)

    def fast(self, device: str | torch.device | None = None, **options: Any) -> "FastEnsemble":
        """The same ensemble on the fast inference engine (see :mod:`naslung.ensemble.engine`)."""
        from naslung.ensemble.engine import FastEnsemble

        return FastEnsemble(self, device=device, **options)
