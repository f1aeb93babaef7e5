"""Samplers that only ever propose valid architectures (pure: numpy, no NNI).

They are the search logic shared by the NNI strategy (:class:`search_spaces.strategies.PartialOrderPruning`)
and the nnictl tuner (:class:`search_spaces.tuner.NasLungTuner`):

- :class:`RandomSampler` -- uniform over valid architectures, no repeats.
- :class:`PopSampler` -- NAS-Lung's partial-order pruning: random candidates filtered by
  :func:`search_spaces.pareto.prune_reason` against what has been trained; Pareto set tracked.
- :class:`EvolutionSampler` -- aging (regularized) evolution with repaired mutations.
"""
from __future__ import annotations

import collections
import copy
import logging
import threading
from typing import Any, Callable

import numpy as np

from search_spaces.pareto import Trained, pareto_front, prune_reason
from search_spaces.space import Arch, SpaceSpec, decode, encode, mutate, sample_arch

log = logging.getLogger(__name__)

LatencyFn = Callable[[Arch], float]


class RandomSampler:
    def __init__(self, spec: SpaceSpec, seed: int | None = None, max_draws: int = 2000) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        self.max_draws = max_draws
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.trained: list[Trained] = []

    def _draw_unseen(self) -> Arch | None:
        for _ in range(self.max_draws):
            arch = sample_arch(self.spec, self.rng)
            if arch.key not in self.seen:
                self.seen.add(arch.key)
                return arch
        return None

    def propose(self) -> Arch | None:
        """The next architecture to train, or ``None`` when the space is exhausted."""
        return self._draw_unseen()

    def record(self, arch: Arch, accuracy: float, latency_ms: float) -> None:
        with self.lock:
            self.trained.append(Trained(arch, float(accuracy), float(latency_ms)))

    def state_dict(self) -> dict[str, Any]:
        with self.lock:
            return {"seen": sorted(self.seen), "rng": copy.deepcopy(self.rng.bit_generator.state),
                    "trained": [{"sample": encode(t.arch, self.spec), "accuracy": t.accuracy,
                                 "latency_ms": t.latency_ms} for t in self.trained]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = set(state.get("seen", []))
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.trained = []
        for t in state.get("trained", []):
            self.record(decode(t["sample"], self.spec), t["accuracy"], t["latency_ms"])


class PopSampler(RandomSampler):
    """Partial-order pruning; ``latency_fn`` measures candidates (paper) or ``None`` bounds them."""

    def __init__(self, spec: SpaceSpec, seed: int | None = None, latency_fn: LatencyFn | None = None,
                 patience: int | None = None, max_draws: int = 2000) -> None:
        super().__init__(spec, seed, max_draws)
        self.latency_fn = latency_fn
        self.patience = patience
        self.pruned: list[dict[str, str]] = []
        self.front_keys: list[str] = []
        self.stable = 0

    def record(self, arch: Arch, accuracy: float, latency_ms: float) -> None:
        with self.lock:
            self.trained.append(Trained(arch, float(accuracy), float(latency_ms)))
            rows = [{"accuracy": t.accuracy, "latency_ms": t.latency_ms} for t in self.trained]
            keys = sorted(self.trained[i].arch.key for i in pareto_front(rows))
            self.stable = self.stable + 1 if keys == self.front_keys else 0
            self.front_keys = keys
        log.info("trained %s: acc %.4f, %.3f ms; Pareto set %d, unchanged for %d", arch.key, accuracy,
                 latency_ms, len(keys), self.stable)

    @property
    def converged(self) -> bool:
        return self.patience is not None and self.stable >= self.patience

    def propose(self) -> Arch | None:
        if self.converged:
            log.info("Pareto set unchanged for %d trained architectures: stopping", self.stable)
            return None
        for _ in range(self.max_draws):
            arch = self._draw_unseen()
            if arch is None:
                return None
            with self.lock:
                trained = list(self.trained)
            latency = (lambda a=arch: self.latency_fn(a)) if self.latency_fn is not None else None
            reason = prune_reason(arch, trained, latency)
            if reason is None:
                return arch
            self.pruned.append({"arch": arch.key, "reason": reason})
            log.info("pruned %s", reason)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pruned": list(self.pruned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pruned = list(state.get("pruned", []))


class EvolutionSampler(RandomSampler):
    """Aging evolution: random births until ``population_size`` results, then tournament + mutation."""

    def __init__(self, spec: SpaceSpec, seed: int | None = None, population_size: int = 20, sample_size: int = 5,
                 mutation_prob: float = 0.2, max_draws: int = 2000) -> None:
        super().__init__(spec, seed, max_draws)
        if not 1 <= sample_size <= population_size:
            raise ValueError("need 1 <= sample_size <= population_size")
        self.population_size, self.sample_size, self.mutation_prob = population_size, sample_size, mutation_prob
        self.population: collections.deque[Trained] = collections.deque()

    def record(self, arch: Arch, accuracy: float, latency_ms: float) -> None:
        super().record(arch, accuracy, latency_ms)
        with self.lock:
            self.population.append(self.trained[-1])
            while len(self.population) > self.population_size:
                self.population.popleft()

    def propose(self) -> Arch | None:
        with self.lock:
            population = list(self.population)
        if len(population) < self.population_size:
            return self._draw_unseen()
        for _ in range(self.max_draws):
            idx = self.rng.permutation(len(population))[:self.sample_size]
            parent = max((population[i] for i in idx), key=lambda t: t.accuracy).arch
            child = mutate(parent, self.spec, self.rng, self.mutation_prob)
            if child.key not in self.seen:
                self.seen.add(child.key)
                return child
        return self._draw_unseen()
