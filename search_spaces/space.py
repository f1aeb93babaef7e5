"""The NAS-Lung architecture space, without NNI: validity, exact uniform sampling, repair, encoding.

An architecture has 3 stages (each at least one residual block), ``min_blocks``..``max_blocks``
blocks in total, block widths from ``widths`` that never decrease through the network (flattened
over the stages), plus a head and a CBAM variant. This is the space of fei-aiart/NAS-Lung's
``get_all_search_space`` extended with the two choices the paper fixed.

The NNI model space (:mod:`search_spaces.model_space`) encodes an architecture as independent
choices -- a depth per stage and a width per block slot -- which cannot express "total depth <= 9"
or "non-decreasing widths". Those constraints are enforced here, by the sampler: :func:`sample_arch`
draws valid architectures uniformly, and :func:`repair` maps any encoded sample (e.g. one mutated
key by key by an evolution strategy) to the nearest valid one. No trial is ever started on an
invalid architecture.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from naslung.models.config import CBAM_VARIANTS, HEADS, WIDTHS, ModelConfig

N_STAGES = 3


@dataclass(frozen=True)
class SpaceSpec:
    """The bounds of the search space; the defaults are the paper's (widths 4..128, 3..9 blocks)."""

    widths: tuple[int, ...] = WIDTHS
    min_blocks: int = 3
    max_blocks: int = 9
    heads: tuple[str, ...] = HEADS
    cbam: tuple[str, ...] = CBAM_VARIANTS
    stem_width: int = 4
    in_size: int = 32
    n_stages: int = N_STAGES

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(sorted(int(w) for w in self.widths)))
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "cbam", tuple(self.cbam))
        if not self.widths or len(set(self.widths)) != len(self.widths) or self.widths[0] <= 0:
            raise ValueError(f"widths must be distinct positive integers, got {self.widths}")
        if self.n_stages < 1:
            raise ValueError(f"need at least one stage, got {self.n_stages}")
        if not self.n_stages <= self.min_blocks <= self.max_blocks:
            raise ValueError(f"need {self.n_stages} <= min_blocks ({self.min_blocks}) <= max_blocks "
                             f"({self.max_blocks}): every stage holds at least one block")
        for name, allowed in (("heads", HEADS), ("cbam", CBAM_VARIANTS)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if self.in_size % (2 ** self.n_stages):
            raise ValueError(f"in_size {self.in_size} is not divisible by 2^{self.n_stages}")

    @property
    def max_stage_depth(self) -> int:
        return self.max_blocks - (self.n_stages - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SpaceSpec":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown search-space fields: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # --------------------------------------------------------------- counting
    def count(self) -> int:
        """Number of distinct valid architectures (widths x splits x heads x CBAM variants)."""
        return sum(self._count_depth(n) for n in range(self.min_blocks, self.max_blocks + 1)) \
            * len(self.heads) * len(self.cbam)

    def _count_depth(self, n: int) -> int:
        k = len(self.widths)
        return math.comb(n + k - 1, n) * math.comb(n - 1, self.n_stages - 1)


@dataclass(frozen=True)
class Arch:
    """One point of the space: ``stages`` of block widths plus the head and CBAM choices."""

    stages: tuple[tuple[int, ...], ...]
    head: str = "asoftmax"
    cbam: str = "naslung"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def flat(self) -> tuple[int, ...]:
        return tuple(w for s in self.stages for w in s)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    @property
    def key(self) -> str:
        arch = "_".join("-".join(str(w) for w in s) for s in self.stages)
        return f"{arch}|{self.head}|{self.cbam}"

    def to_config(self, spec: SpaceSpec, name: str = "", **kw: Any) -> ModelConfig:
        return ModelConfig(stages=self.stages, head=self.head, cbam=self.cbam, stem_width=spec.stem_width,
                           in_size=spec.in_size, name=name, **kw)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "Arch":
        return cls(stages=cfg.stages, head=cfg.head, cbam=cfg.cbam)


def violations(arch: Arch, spec: SpaceSpec) -> list[str]:
    """Why ``arch`` is outside the space (empty list = valid)."""
    problems = []
    if len(arch.stages) != spec.n_stages:
        problems.append(f"{len(arch.stages)} stages, expected {spec.n_stages}")
    if any(len(s) == 0 for s in arch.stages):
        problems.append("a stage has no block")
    n = len(arch.flat)
    if not spec.min_blocks <= n <= spec.max_blocks:
        problems.append(f"{n} blocks, expected {spec.min_blocks}..{spec.max_blocks}")
    bad = sorted({w for w in arch.flat if w not in spec.widths})
    if bad:
        problems.append(f"widths {bad} not in {spec.widths}")
    if any(a > b for a, b in zip(arch.flat, arch.flat[1:])):
        problems.append(f"widths decrease through the network: {list(arch.flat)}")
    if arch.head not in spec.heads:
        problems.append(f"head {arch.head!r} not in {spec.heads}")
    if arch.cbam not in spec.cbam:
        problems.append(f"cbam {arch.cbam!r} not in {spec.cbam}")
    return problems


def is_valid(arch: Arch, spec: SpaceSpec) -> bool:
    return not violations(arch, spec)


def sample_arch(spec: SpaceSpec, rng: np.random.Generator) -> Arch:
    """One architecture drawn uniformly from all valid ones (exact, no rejection)."""
    depths = np.arange(spec.min_blocks, spec.max_blocks + 1)
    weights = np.array([spec._count_depth(int(n)) for n in depths], dtype=np.float64)
    n = int(rng.choice(depths, p=weights / weights.sum()))
    k = len(spec.widths)
    # A uniform multiset of n widths = a uniform n-subset of n + k - 1 slots (stars and bars).
    slots = np.sort(rng.choice(n + k - 1, size=n, replace=False))
    flat = [spec.widths[int(s - i)] for i, s in enumerate(slots)]
    # A uniform split of n blocks into n_stages non-empty stages = uniform cut points.
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, n), size=spec.n_stages - 1, replace=False))
    bounds = [0, *cuts, n]
    stages = tuple(tuple(flat[a:b]) for a, b in zip(bounds, bounds[1:]))
    return Arch(stages, head=str(rng.choice(spec.heads)), cbam=str(rng.choice(spec.cbam)))


def enumerate_archs(spec: SpaceSpec) -> Iterator[Arch]:
    """Every valid architecture (about 10^5 for the paper's space; used by tests on small specs)."""
    from itertools import combinations, combinations_with_replacement

    for n in range(spec.min_blocks, spec.max_blocks + 1):
        for flat in combinations_with_replacement(spec.widths, n):
            for cuts in combinations(range(1, n), spec.n_stages - 1):
                bounds = [0, *cuts, n]
                stages = tuple(tuple(flat[a:b]) for a, b in zip(bounds, bounds[1:]))
                for head in spec.heads:
                    for cbam in spec.cbam:
                        yield Arch(stages, head, cbam)


# ------------------------------------------------------------------ NNI-style encoding
def depth_label(stage: int) -> str:
    return f"s{stage}_depth"


def width_label(slot: int) -> str:
    return f"b{slot}_width"


def encoding_labels(spec: SpaceSpec) -> list[str]:
    return ([depth_label(s) for s in range(spec.n_stages)]
            + [width_label(i) for i in range(spec.max_blocks)] + ["head", "cbam"])


def encode(arch: Arch, spec: SpaceSpec) -> dict[str, Any]:
    """The flat sample dict (NNI labels) of a valid architecture; unused width slots repeat the last."""
    flat = list(arch.flat)
    sample: dict[str, Any] = {depth_label(s): len(st) for s, st in enumerate(arch.stages)}
    for i in range(spec.max_blocks):
        sample[width_label(i)] = flat[i] if i < len(flat) else flat[-1]
    sample["head"] = arch.head
    sample["cbam"] = arch.cbam
    return sample


def decode(sample: Mapping[str, Any], spec: SpaceSpec) -> Arch:
    """The architecture an encoded sample describes, as is (it may be invalid; see :func:`repair`)."""
    depths = [int(sample[depth_label(s)]) for s in range(spec.n_stages)]
    slots = [int(sample[width_label(i)]) for i in range(spec.max_blocks)]
    stages, pos = [], 0
    for d in depths:
        stages.append(tuple(slots[pos:pos + d]))
        pos += d
    return Arch(tuple(stages), head=str(sample["head"]), cbam=str(sample["cbam"]))


def repair(sample: Mapping[str, Any], spec: SpaceSpec) -> dict[str, Any]:
    """The nearest valid encoded sample: depths shrunk/grown into bounds, active widths sorted.

    Sorting keeps the multiset of chosen widths (a mutation that changed one width keeps that
    width somewhere in the network); depths are adjusted one block at a time on the deepest
    (or shallowest) stage, so a mutated depth survives whenever it can.
    """
    out = dict(sample)
    depths = [min(max(int(out[depth_label(s)]), 1), spec.max_stage_depth) for s in range(spec.n_stages)]
    while sum(depths) > spec.max_blocks:
        depths[int(np.argmax(depths))] -= 1
    while sum(depths) < spec.min_blocks:
        depths[int(np.argmin(depths))] += 1
    n = sum(depths)
    allowed = np.array(spec.widths)
    slots = []
    for i in range(spec.max_blocks):
        w = int(out[width_label(i)])
        slots.append(int(allowed[np.argmin(np.abs(allowed - w))]))  # snap to the nearest allowed width
    active = sorted(slots[:n])
    slots = active + [active[-1]] * (spec.max_blocks - n)
    for s, d in enumerate(depths):
        out[depth_label(s)] = d
    for i, w in enumerate(slots):
        out[width_label(i)] = w
    if out.get("head") not in spec.heads:
        out["head"] = spec.heads[0]
    if out.get("cbam") not in spec.cbam:
        out["cbam"] = spec.cbam[0]
    return out


def canonical(sample: Mapping[str, Any], spec: SpaceSpec) -> dict[str, Any]:
    """Encoding with unused width slots normalised, so equal architectures give equal samples."""
    return encode(decode(sample, spec), spec)


def mutate(arch: Arch, spec: SpaceSpec, rng: np.random.Generator, prob: float = 0.2) -> Arch:
    """A neighbour of ``arch``: each encoded key resampled with probability ``prob``, then repaired."""
    sample = encode(arch, spec)
    choices: dict[str, Sequence[Any]] = {depth_label(s): range(1, spec.max_stage_depth + 1)
                                         for s in range(spec.n_stages)}
    choices.update({width_label(i): spec.widths for i in range(spec.max_blocks)})
    choices.update(head=spec.heads, cbam=spec.cbam)
    for key, values in choices.items():
        if rng.random() < prob:
            sample[key] = values[int(rng.integers(len(values)))]
    return decode(repair(sample, spec), spec)
