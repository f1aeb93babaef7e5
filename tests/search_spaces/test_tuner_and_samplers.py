"""The nnictl tuner and the pure samplers it shares with the NNI strategies."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from search_spaces.samplers import EvolutionSampler, PopSampler, RandomSampler
from search_spaces.space import SpaceSpec, decode, encoding_labels, is_valid

SPEC = SpaceSpec(widths=(4, 8, 16), min_blocks=3, max_blocks=5, heads=("asoftmax",), cbam=("naslung",))


def acc_lat(arch):
    return 0.5 + 0.4 * (1 - np.exp(-sum(arch.flat) / 40)), 2.0 * len(arch.flat) + sum(arch.flat) / 16


def test_random_sampler_exhausts_the_space_without_repeats():
    s = RandomSampler(SPEC, seed=0, max_draws=5000)
    keys = []
    while (a := s.propose()) is not None:
        keys.append(a.key)
    assert len(keys) == len(set(keys)) == SPEC.count()


def test_pop_sampler_prunes_dominated_candidates_and_converges():
    s = PopSampler(SPEC, seed=0, latency_fn=lambda a: acc_lat(a)[1], patience=15)
    trained = 0
    while (a := s.propose()) is not None:
        assert is_valid(a, SPEC)
        s.record(a, *acc_lat(a))
        trained += 1
    assert s.pruned and trained + len(s.pruned) <= SPEC.count()
    assert trained < SPEC.count()  # pruning and convergence saved trials
    state = s.state_dict()
    t = PopSampler(SPEC, seed=0)
    t.load_state_dict(state)
    assert t.front_keys == s.front_keys and len(t.pruned) == len(s.pruned)


def test_evolution_sampler_mutates_the_best_after_the_initial_population():
    s = EvolutionSampler(SPEC, seed=0, population_size=4, sample_size=2, mutation_prob=0.4)
    for _ in range(20):
        a = s.propose()
        assert a is not None and is_valid(a, SPEC)
        s.record(a, *acc_lat(a))
    assert len(s.population) == 4 and len(s.seen) == 20


def test_tuner_proposes_valid_encoded_architectures(tmp_path):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    from search_spaces.tuner import NasLungTuner

    cfg = tmp_path / "search.yml"
    cfg.write_text(yaml.safe_dump({"space": SPEC.to_dict(), "strategy": {"name": "pop", "candidate_latency": "bound"}}))
    tuner = NasLungTuner(config=str(cfg))
    tuner.update_search_space({k: {"_type": "choice", "_value": [0]} for k in encoding_labels(SPEC)})
    seen = set()
    for pid in range(10):
        params = tuner.generate_parameters(pid)
        arch = decode(params, SPEC)
        assert is_valid(arch, SPEC) and arch.key not in seen
        seen.add(arch.key)
        acc, lat = acc_lat(arch)
        tuner.receive_trial_result(pid, params, {"default": acc, "latency_ms": lat})
    assert len(tuner.sampler.trained) == 10


def test_tuner_finds_the_shipped_config_from_any_directory(monkeypatch, tmp_path):
    import nni  # noqa: F401  (pinned in requirements.txt: a broken install must fail, not skip)
    from search_spaces.tuner import NasLungTuner, resolve_config_path

    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("examples/search_naslung.yml").is_file()
    tuner = NasLungTuner(config="examples/search_naslung.yml", strategy="random")
    assert tuner.spec.max_blocks == 9
    with pytest.raises(FileNotFoundError):
        resolve_config_path("examples/nope.yml")
