"""NNI 3.0 integration without the NNI manager: the ModelSpace, its constraint, and our strategies
driven by NNI's in-process SequentialExecutionEngine with a cheap synthetic evaluator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nni  # noqa: F401,E402  (pinned in requirements.txt: a broken install must fail, not skip)

from search_spaces.model_space import NasLungSpace  # noqa: E402  (first: imports NNI quietly)

import nni  # noqa: E402
from nni.mutable import ConstraintViolation  # noqa: E402
from nni.nas.evaluator import FunctionalEvaluator  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.space import SimplifiedModelSpace  # noqa: E402
from nni.nas.strategy import Random as NniRandom  # noqa: E402

from search_spaces.space import SpaceSpec, decode, encode, is_valid, sample_arch  # noqa: E402
from search_spaces.strategies import NasLungEvolution, NasLungRandom, PartialOrderPruning  # noqa: E402

SPEC = SpaceSpec(widths=(4, 8, 16), min_blocks=3, max_blocks=5, heads=("asoftmax",), cbam=("naslung",), in_size=16)

SEEN: list = []


def fake_evaluate(model):
    """Width buys accuracy, depth costs latency: deep narrow nets get dominated, so pruning happens."""
    cfg = model.model_config
    SEEN.append(cfg)
    widths = [w for s in cfg.stages for w in s]
    acc = 0.5 + 0.4 * (1 - np.exp(-sum(widths) / 40))
    lat = 2.0 * len(widths) + sum(widths) / 16
    nni.report_final_result({"default": float(acc), "latency_ms": float(lat)})


def run(strategy, n: int):
    SEEN.clear()
    space = SimplifiedModelSpace.from_model(NasLungSpace(space=SPEC.to_dict()), FunctionalEvaluator(fake_evaluate))
    engine = SequentialExecutionEngine(max_model_count=n)
    strategy(space, engine)
    return list(SEEN)


def test_frozen_space_is_the_model_of_its_config():
    space = NasLungSpace(space=SPEC.to_dict())
    assert is_valid(space.arch, SPEC)  # NNI's default sample is valid
    arch = sample_arch(SPEC, np.random.default_rng(0))
    model = space.freeze(encode(arch, SPEC))
    assert model.model_config == arch.to_config(SPEC)
    out = model(torch.zeros(2, 1, 16, 16, 16))
    assert out.shape == (2, 2)


def test_constraint_rejects_samples_outside_the_space():
    space = NasLungSpace(space=SPEC.to_dict())
    bad = encode(sample_arch(SPEC, np.random.default_rng(1)), SPEC)
    bad.update(s0_depth=1, s1_depth=1, s2_depth=1, b0_width=16, b1_width=4)
    with pytest.raises(ConstraintViolation, match="decrease"):
        space.freeze(bad)


def test_nni_builtin_random_never_trains_an_invalid_architecture():
    cfgs = run(NniRandom(seed=0), 15)
    assert len(cfgs) == 15
    for c in cfgs:
        flat = [w for s in c.stages for w in s]
        assert flat == sorted(flat) and 3 <= len(flat) <= 5


@pytest.mark.parametrize("make", [lambda: NasLungRandom(seed=0),
                                  lambda: NasLungEvolution(seed=0, population_size=6, sample_size=3,
                                                           mutation_prob=0.3)])
def test_our_strategies_submit_distinct_valid_architectures(make):
    cfgs = run(make(), 25)
    assert len(cfgs) == 25
    keys = [c.key for c in cfgs]
    assert len(set(keys)) == len(keys)
    for c in cfgs:
        flat = [w for s in c.stages for w in s]
        assert flat == sorted(flat) and 3 <= len(flat) <= 5


def test_partial_order_pruning_prunes_and_tracks_the_pareto_set():
    lat = lambda arch: 2.0 * len(arch.flat) + sum(arch.flat) / 16  # noqa: E731 - same as the evaluator
    strategy = PartialOrderPruning(seed=0, latency_fn=lat)
    cfgs = run(strategy, 40)
    trained = strategy.trained
    assert len(cfgs) == len(trained) > 0
    assert strategy.pruned, "the synthetic landscape has dominated deep-narrow nets: something must be pruned"
    trained_keys = {t.arch.key for t in trained}
    for p in strategy.pruned:
        assert p["arch"] not in trained_keys  # a pruned candidate is never trained
    # every pruned candidate really is dominated by a trained architecture (the evaluator is exact)
    for p in strategy.pruned:
        arch = next(a for a in _all_archs() if a.key == p["arch"])
        acc = 0.5 + 0.4 * (1 - np.exp(-sum(arch.flat) / 40))
        assert any(t.accuracy > acc and t.latency_ms < lat(arch) for t in trained)
    front = set(strategy.pareto_keys)
    for t in trained:
        dominated = any(o.accuracy >= t.accuracy and o.latency_ms <= t.latency_ms and
                        (o.accuracy > t.accuracy or o.latency_ms < t.latency_ms) for o in trained)
        assert (t.arch.key in front) == (not dominated)


def test_partial_order_pruning_state_roundtrip():
    strategy = PartialOrderPruning(seed=0)
    run(strategy, 8)
    state = strategy.state_dict()
    other = PartialOrderPruning(seed=0)
    other._spec = SPEC
    other.load_state_dict(state)
    assert [t.arch.key for t in other.trained] == [t.arch.key for t in strategy.trained]
    assert other.pareto_keys == strategy.pareto_keys
    assert decode(state["trained"][0]["sample"], SPEC) == strategy.trained[0].arch


def _all_archs():
    from search_spaces.space import enumerate_archs

    return enumerate_archs(SPEC)
