"""An NNI tuner for ``nnictl create --config examples/search.yml``: the same search, NNI's own tool.

NNI's HPO tuners sample each key independently and cannot respect "non-decreasing widths" or
"at most 9 blocks"; this tuner proposes only valid architectures (encoded with the labels of
:func:`search_spaces.space.encode`), using the samplers of :mod:`search_spaces.samplers`, and
the trial entry point ``python -m search_spaces.trial`` trains them. The space and strategy come
from the same YAML as ``naslung search`` (``classArgs.config``), so both routes search one space.

NNI gives a tuner 10 seconds to connect after it starts, so this module imports only ``nni.tuner``;
torch and the samplers are imported when the first architecture is asked for.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search_spaces.nni_api import require_nni

nni = require_nni(("nni.tuner",))

from nni.tuner import Tuner  # noqa: E402

log = logging.getLogger(__name__)


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, else relative to the repository (NNI starts tuners in other dirs)."""
    p = Path(path)
    if p.is_absolute() or p.is_file():
        return p
    repo = Path(__file__).resolve().parents[1] / p
    if repo.is_file():
        return repo
    raise FileNotFoundError(f"tuner config {path} not found (also tried {repo})")


class NasLungTuner(Tuner):
    """classArgs: ``config`` (the search YAML), optional ``strategy`` (pop | random | evolution) and ``seed``."""

    def __init__(self, config: str | None = None, strategy: str | None = None, seed: int | None = None,
                 space: dict[str, Any] | None = None) -> None:
        import yaml

        self.cfg: dict[str, Any] = {}
        if config:
            self.cfg = yaml.safe_load(resolve_config_path(config).read_text()) or {}
        st = dict(self.cfg.get("strategy") or {})
        self.strategy = strategy or st.get("name", "pop")
        if self.strategy not in ("pop", "random", "evolution"):
            raise ValueError(f"unknown strategy {self.strategy!r}; choose pop, random or evolution")
        self.seed = st.get("seed", 0) if seed is None else seed
        self.space_overrides = dict(space or {})
        self._sampler = None
        self._spec = None

    @property
    def spec(self):
        if self._spec is None:
            from search_spaces.space import SpaceSpec

            self._spec = SpaceSpec.from_dict({**(self.cfg.get("space") or {}), **self.space_overrides})
        return self._spec

    @property
    def sampler(self):
        if self._sampler is None:
            from search_spaces.samplers import EvolutionSampler, PopSampler, RandomSampler

            st = dict(self.cfg.get("strategy") or {})
            if self.strategy == "pop":
                latency_fn = None
                if st.get("candidate_latency", "measure") == "measure":
                    from search_spaces.experiment import _latency_fn
                    from search_spaces.trial import TrialSpec

                    trial = TrialSpec.from_dict({**(self.cfg.get("trial") or {}), "data": ""})
                    latency_fn = _latency_fn(trial, self.spec)
                self._sampler = PopSampler(self.spec, seed=self.seed, latency_fn=latency_fn,
                                           patience=st.get("patience"))
            elif self.strategy == "evolution":
                self._sampler = EvolutionSampler(self.spec, seed=self.seed,
                                                 population_size=st.get("population_size", 20),
                                                 sample_size=st.get("sample_size", 5),
                                                 mutation_prob=st.get("mutation_prob", 0.2))
            else:
                self._sampler = RandomSampler(self.spec, seed=self.seed)
            log.info("NasLungTuner: %s over %d architectures", self.strategy, self.spec.count())
        return self._sampler

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        # The experiment's searchSpace is only what NNI's UI shows; sampling follows self.spec,
        # which also enforces the constraints a flat searchSpace cannot express.
        from search_spaces.space import encoding_labels

        missing = [k for k in encoding_labels(self.spec) if k not in (search_space or {})]
        if missing:
            log.warning("searchSpace lacks %s; the NNI UI will not show them", missing)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict[str, Any]:
        from search_spaces.space import encode

        arch = self.sampler.propose()
        if arch is None:
            raise nni.NoMoreTrialError("no architecture left to train (converged, pruned or exhausted)")
        log.info("parameter %d: %s", parameter_id, arch.key)
        return encode(arch, self.spec)

    def receive_trial_result(self, parameter_id: int, parameters: dict[str, Any], value: Any, **kwargs: Any) -> None:
        from search_spaces.space import decode

        if not isinstance(value, dict) or value.get("latency_ms") is None:
            log.warning("result of parameter %d has no latency; not used", parameter_id)
            return
        self.sampler.record(decode(parameters, self.spec), float(value["default"]), float(value["latency_ms"]))

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        if not success:
            log.warning("parameter %d: trial failed", parameter_id)
