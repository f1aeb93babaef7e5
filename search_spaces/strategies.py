"""NNI 3.0 multi-trial strategies over :class:`~search_spaces.model_space.NasLungSpace`.

All three sample only valid architectures (uniformly, via :func:`search_spaces.space.sample_arch`,
or by repairing a mutated encoding), so the space's constraints cost no trial:

- :class:`NasLungRandom` -- uniform random search without repeats.
- :class:`NasLungEvolution` -- NNI's ``RegularizedEvolution`` (aging evolution) with a uniform
  initial population and repaired mutations.
- :class:`PartialOrderPruning` -- NAS-Lung's search: random candidates, each checked against the
  trained ones with :func:`search_spaces.pareto.prune_reason` before it is submitted; pruned
  candidates are recorded, never trained; the Pareto set is tracked as trials finish.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import numpy as np

from search_spaces.nni_api import require_nni

require_nni()

from nni.mutable import MutableAnnotation  # noqa: E402
from nni.nas.execution.event import ModelEvent, ModelEventType  # noqa: E402
from nni.nas.strategy import RegularizedEvolution, Strategy  # noqa: E402
from nni.nas.strategy.utils import DeduplicationHelper, DuplicationError  # noqa: E402

from search_spaces.pareto import Trained  # noqa: E402
from search_spaces.samplers import PopSampler  # noqa: E402
from search_spaces.space import Arch, SpaceSpec, decode, encode, repair, sample_arch  # noqa: E402

log = logging.getLogger(__name__)

LatencyFn = Callable[[Arch], float]


def space_spec_of(model_space: Any) -> SpaceSpec:
    """The :class:`SpaceSpec` a (simplified, executable) NasLungSpace was built with."""
    inner = getattr(model_space, "model", model_space)
    kwargs = getattr(inner, "trace_kwargs", None) or {}
    return SpaceSpec.from_dict(kwargs.get("space"))


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return copy.deepcopy(rng.bit_generator.state)


class _Sampling:
    """Shared helpers: uniform valid samples, repair, freezing through the executable space, and the
    optional early stopping (:class:`search_spaces.assessor.EarlyStopping`, set by the experiment
    before it starts) listening to the engine while the strategy runs."""

    _spec: SpaceSpec | None = None
    _rng: np.random.Generator
    early_stopping: Any = None

    def _initialize(self, model_space, engine):
        model_space = super()._initialize(model_space, engine)  # type: ignore[misc]
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._release)
        if self.early_stopping is not None:
            self.early_stopping.attach(engine)
        return model_space

    def _submit(self, model) -> None:
        """Submit ``model`` and keep it alive until its training ends.

        NNI 3.0's engine holds submitted models only weakly once the manager has them and drops
        every metric or end event whose model was garbage-collected ("strategy must have thrown
        the model away"); a strategy that listens to those events must hold on to its models.
        """
        if not hasattr(self, "_in_flight"):
            self._in_flight: dict[int, Any] = {}
        self._in_flight[id(model)] = model
        self.engine.submit_models(model)  # type: ignore[attr-defined]

    def _release(self, event: ModelEvent) -> None:
        getattr(self, "_in_flight", {}).pop(id(event.model), None)

    def _cleanup(self) -> None:
        # Early stopping and the references to in-flight models stay with the engine after the
        # strategy's run ends: NNI still runs the last submitted trials ("Waiting for models
        # submitted to engine to finish"), and those too may need stopping. The engine goes with
        # the experiment.
        super()._cleanup()  # type: ignore[misc]

    @property
    def spec(self) -> SpaceSpec:
        if self._spec is None:
            self._spec = space_spec_of(self.model_space)  # type: ignore[attr-defined]
        return self._spec

    def _freeze(self, arch: Arch):
        return self.model_space.freeze(encode(arch, self.spec))  # type: ignore[attr-defined]


class NasLungRandom(_Sampling, Strategy):
    """Uniform random search over valid architectures, no architecture twice."""

    def __init__(self, *, seed: int | None = None, max_retries: int = 1000) -> None:
        super().__init__()
        self._rng = np.random.default_rng(seed)
        self._seen: set[str] = set()
        self.max_retries = max_retries

    def extra_repr(self) -> str:
        return f"seen={len(self._seen)}"

    def next_arch(self) -> Arch | None:
        for _ in range(self.max_retries):
            arch = sample_arch(self.spec, self._rng)
            if arch.key not in self._seen:
                self._seen.add(arch.key)
                return arch
        return None

    def _run(self) -> None:
        while self.wait_for_resource():
            arch = self.next_arch()
            if arch is None:
                log.info("no unseen architecture after %d draws; the space is exhausted", self.max_retries)
                return
            log.info("random: %s", arch.key)
            self._submit(self._freeze(arch))

    def state_dict(self) -> dict:
        return {"seen": sorted(self._seen), "rng": _rng_state(self._rng)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._seen = set(state_dict.get("seen", []))
        if "rng" in state_dict:
            self._rng.bit_generator.state = state_dict["rng"]


class NasLungEvolution(_Sampling, RegularizedEvolution):
    """Aging evolution whose individuals are always valid (uniform births, repaired mutations)."""

    def __init__(self, *, population_size: int = 20, sample_size: int = 5, mutation_prob: float = 0.2,
                 crossover: bool = False, seed: int | None = None) -> None:
        super().__init__(population_size=population_size, sample_size=sample_size, mutation_prob=mutation_prob,
                         crossover=crossover, dedup=True, seed=seed)
        self._rng = np.random.default_rng(seed)

    def random(self):
        arch = sample_arch(self.spec, self._rng)
        sample = encode(arch, self.spec)
        self._dedup_helper.dedup(sample)  # raises DuplicationError -> NNI's retry helper draws again
        self._individual_counter += 1
        log.info("[individual %4d] random: %s", self._individual_counter, arch.key)
        return self.model_space.freeze(sample)

    def new_individual(self):
        parent = self.best_parent()
        if self.crossover:
            other = self.best_parent()
            parent = {k: (other[k] if self._random_state.uniform(0, 1) < 0.5 else v) for k, v in parent.items()}
        sample = copy.copy(parent)
        for key, mutable in self.model_space.simplify().items():
            if isinstance(mutable, MutableAnnotation):
                continue
            if self._random_state.uniform(0, 1) < self.mutation_prob:
                sample[key] = mutable.random(random_state=self._random_state)
        sample = repair(sample, self.spec)  # the sampler, not a failed trial, enforces the constraints
        self._dedup_helper.dedup(sample)
        self._individual_counter += 1
        log.info("[individual %4d] mutated: %s", self._individual_counter, decode(sample, self.spec).key)
        return self.model_space.freeze(sample)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": _rng_state(self._rng)}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "rng" in state_dict:
            self._rng.bit_generator.state = state_dict["rng"]


class PartialOrderPruning(_Sampling, Strategy):
    """NAS-Lung's partial-order pruning search as an NNI strategy (logic: :class:`PopSampler`).

    Parameters
    ----------
    latency_fn
        Measures an untrained candidate's latency (ms) on the trials' device, as the paper does.
        Called only when pruning is possible. ``None`` uses the partial-order lower bound instead.
    patience
        Stop once this many consecutive trained architectures left the Pareto set unchanged
        (the paper stops after 30); ``None`` runs until NNI's trial budget is spent.
    max_draws
        Draws per submission before declaring the remaining space pruned or exhausted.
    """

    def __init__(self, *, seed: int | None = None, latency_fn: LatencyFn | None = None,
                 patience: int | None = None, max_draws: int = 2000) -> None:
        super().__init__()
        self._options = dict(seed=seed, latency_fn=latency_fn, patience=patience, max_draws=max_draws)
        self._sampler: PopSampler | None = None

    @property
    def sampler(self) -> PopSampler:
        if self._sampler is None:
            self._sampler = PopSampler(self.spec, **self._options)
        return self._sampler

    @property
    def trained(self) -> list[Trained]:
        return list(self.sampler.trained)

    @property
    def pruned(self) -> list[dict[str, str]]:
        return list(self.sampler.pruned)

    @property
    def pareto_keys(self) -> list[str]:
        return list(self.sampler.front_keys)

    def extra_repr(self) -> str:
        s = self._sampler
        return "" if s is None else f"trained={len(s.trained)}, pruned={len(s.pruned)}, pareto={len(s.front_keys)}"

    def _initialize(self, model_space, engine):
        model_space = super()._initialize(model_space, engine)
        engine.register_model_event_callback(ModelEventType.FinalMetric, self._on_final_metric)
        return model_space

    def _cleanup(self) -> None:
        self.engine.unregister_model_event_callback(ModelEventType.FinalMetric, self._on_final_metric)
        super()._cleanup()

    def _on_final_metric(self, event: ModelEvent) -> None:
        metric = getattr(event, "metric", None)
        if not isinstance(metric, dict) or metric.get("latency_ms") is None or event.model.sample is None:
            log.warning("metric without latency for %s; not used for pruning", event.model)
            return
        self.sampler.record(decode(event.model.sample, self.spec), float(metric["default"]),
                            float(metric["latency_ms"]))

    def _run(self) -> None:
        while self.wait_for_resource():
            arch = self.sampler.propose()
            if arch is None:
                log.info("no candidate left to train (converged, pruned or exhausted)")
                return
            log.info("partial-order: submitting %s", arch.key)
            self._submit(self._freeze(arch))

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.sampler.load_state_dict(state_dict)


STRATEGIES = {"random": NasLungRandom, "evolution": NasLungEvolution, "pop": PartialOrderPruning}


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)


__all__ = ["NasLungRandom", "NasLungEvolution", "PartialOrderPruning", "STRATEGIES", "make_strategy",
           "space_spec_of", "DuplicationError", "DeduplicationHelper"]
