"""The NAS-Lung space as an NNI 3.0 ``ModelSpace``.

Independent choices -- ``s{i}_depth`` per stage, ``b{j}_width`` per block slot, ``head``,
``cbam`` -- plus :class:`ArchConstraint`, an NNI ``Constraint`` that rejects encodings outside the
space (total depth, non-decreasing widths). NNI's own samplers therefore never emit an invalid
architecture (they retry), and our strategies (:mod:`search_spaces.strategies`) repair samples
before NNI sees them instead of relying on rejection, which would bias the search towards
shallow networks (a random 9-block width sequence is sorted with probability 2e-4).

A frozen space *is* a trainable model: it holds ``model_config`` (a
:class:`naslung.models.config.ModelConfig`) and ``net = build_model(model_config)``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from search_spaces.nni_api import require_nni

nni = require_nni()

import torch  # noqa: E402
from nni.mutable import Categorical, ConstraintViolation, ensure_frozen  # noqa: E402
from nni.mutable.annotation import Constraint  # noqa: E402
from nni.nas.nn.pytorch import ModelSpace  # noqa: E402
from nni.nas.space import model_context  # noqa: E402

from naslung.models import build_model  # noqa: E402
from naslung.models.config import ModelConfig  # noqa: E402
from search_spaces.space import (Arch, SpaceSpec, decode, depth_label, violations,  # noqa: E402
                                 width_label)

CONSTRAINT_LABEL = "valid_arch"


class ArchConstraint(Constraint):
    """Valid iff the encoded sample decodes to an architecture inside the space."""

    def __init__(self, spec: SpaceSpec, mutables: list[Categorical], label: str = CONSTRAINT_LABEL) -> None:
        self.label = label
        self.spec = spec
        self.mutables = list(mutables)

    def leaf_mutables(self, is_leaf: Callable[[Any], bool]) -> Iterable[Any]:
        for m in self.mutables:
            yield from m.leaf_mutables(is_leaf)
        yield self

    def check_contains(self, sample: dict[str, Any]) -> ConstraintViolation | None:
        for m in self.mutables:
            exc = m.check_contains(sample)
            if exc is not None:
                return exc
        problems = violations(decode(sample, self.spec), self.spec)
        return ConstraintViolation("; ".join(problems)) if problems else None

    def extra_repr(self) -> str:
        return f"label={self.label!r}"


def _default_depths(spec: SpaceSpec) -> list[int]:
    base, rest = divmod(spec.min_blocks, spec.n_stages)
    return [base + (1 if s >= spec.n_stages - rest else 0) for s in range(spec.n_stages)]


class NasLungSpace(ModelSpace):
    """3 stages of residual blocks with CBAM; widths and depths searched, head and CBAM chosen.

    ``space`` is a :class:`SpaceSpec` as a dict (plain JSON, so NNI can send it to trials).
    """

    def __init__(self, space: dict[str, Any] | None = None) -> None:
        super().__init__()
        spec = SpaceSpec.from_dict(space)
        defaults = _default_depths(spec)
        values: dict[str, Any] = {}
        mutables: list[Categorical] = []

        def add(label: str, choices: list[Any]) -> None:
            m = self.add_mutable(nni.choice(label, choices))
            mutables.append(m)
            values[label] = ensure_frozen(m)

        for s in range(spec.n_stages):
            depths = list(range(1, spec.max_stage_depth + 1))
            depths.remove(defaults[s])
            add(depth_label(s), [defaults[s]] + depths)  # NNI's default is the first choice: keep it valid
        for i in range(spec.max_blocks):
            add(width_label(i), list(spec.widths))
        add("head", list(spec.heads))
        add("cbam", list(spec.cbam))
        self.add_mutable(ArchConstraint(spec, mutables))

        arch = decode(values, spec)
        problems = violations(arch, spec)
        if problems:  # only reachable when a caller forces an invalid sample through model_context
            raise ValueError(f"sample {values} is outside the NAS-Lung space: {'; '.join(problems)}")
        self.arch: Arch = arch
        self.model_config: ModelConfig = arch.to_config(spec)
        self.net = build_model(self.model_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def freeze(self, sample: dict[str, Any]) -> "NasLungSpace":
        self.validate(sample)
        with model_context(sample):
            return NasLungSpace(**self.trace_kwargs)
