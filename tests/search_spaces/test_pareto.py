"""Partial order, the paper's pruning rule and Pareto extraction, as pure functions (no NNI)."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces.pareto import (Trained, dominates, latency_lower_bound, pareto_front, precedes, prune_reason,
                                  should_prune, stage_embeds)
from search_spaces.space import Arch


def A(*stages, head="asoftmax", cbam="naslung"):
    return Arch(tuple(tuple(s) for s in stages), head, cbam)


@pytest.mark.parametrize("small, big, expected", [
    ((4,), (4,), True),
    ((4,), (8,), True),
    ((8,), (4,), False),
    ((4, 8), (4, 8, 16), True),     # delete a block
    ((16,), (4, 8), False),         # wider than every block of big
    ((8, 16), (4, 8, 16), True),    # aligned with the last blocks
    ((4, 8, 16, 16), (4, 8, 16), False),  # deeper
])
def test_stage_embeds(small, big, expected):
    assert stage_embeds(small, big) is expected


def test_precedes_is_narrower_or_shallower_per_stage():
    big = A((8, 8), (16, 32), (64,))
    assert precedes(A((8,), (16,), (32,)), big)
    assert precedes(big, big)
    assert not precedes(A((8, 8, 8), (16,), (64,)), big)      # deeper in stage 0
    assert not precedes(A((8,), (64,), (64,)), big)           # wider in stage 1
    assert not precedes(A((8,), (16,), (32,), head="softmax"), big)  # other head: incomparable
    assert not precedes(big, A((8,), (16,), (32,)))


def test_precedes_is_a_partial_order_on_samples():
    from search_spaces.space import SpaceSpec, enumerate_archs

    spec = SpaceSpec(widths=(4, 8, 16), max_blocks=4, heads=("asoftmax",), cbam=("naslung",))
    archs = list(enumerate_archs(spec))
    rnd = random.Random(0)
    for _ in range(3000):
        a, b, c = rnd.choice(archs), rnd.choice(archs), rnd.choice(archs)
        assert precedes(a, a)
        if precedes(a, b) and precedes(b, a):
            assert a == b                                   # antisymmetric
        if precedes(a, b) and precedes(b, c):
            assert precedes(a, c)                           # transitive


M = Trained(A((8, 8), (16, 16), (32, 32)), accuracy=0.80, latency_ms=10.0)   # big, slow, mediocre
Y = Trained(A((16,), (32,), (64,)), accuracy=0.85, latency_ms=4.0)           # dominates M


def test_paper_rule_prunes_a_narrower_candidate_slower_than_the_dominator():
    assert dominates(Y, M)
    cand = A((8,), (16, 16), (32, 32))  # shallower than M: acc <= 0.80 < 0.85 by the assumption
    assert precedes(cand, M.arch)
    reason = prune_reason(cand, [M, Y], candidate_latency_ms=6.0)   # slower than Y
    assert reason and cand.key in reason and Y.arch.key in reason
    assert not should_prune(cand, [M, Y], candidate_latency_ms=3.0)  # faster than Y: may join the front


def test_no_pruning_without_a_dominated_architecture_above():
    cand = A((8,), (16,), (32,))
    assert not should_prune(cand, [Y], 100.0)               # nothing trained above cand
    not_dominated = Trained(M.arch, accuracy=0.90, latency_ms=10.0)
    assert not should_prune(cand, [not_dominated, Y], 100.0)  # M beats Y on accuracy: no "yw"
    unrelated = A((4,), (4,), (128,))                        # not below M
    assert not should_prune(unrelated, [M, Y], 100.0)


def test_latency_is_measured_only_when_pruning_is_possible():
    calls = []

    def measure():
        calls.append(1)
        return 6.0

    assert not should_prune(A((4,), (4,), (128,)), [M, Y], measure)
    assert calls == []
    assert should_prune(A((8,), (16,), (32,)), [M, Y], measure)
    assert calls == [1]


def test_lower_bound_rule_needs_no_measurement():
    small = Trained(A((8,), (16,), (32,)), accuracy=0.70, latency_ms=5.0)   # below cand, slower than Y
    cand = A((8,), (16, 16), (32,))
    assert latency_lower_bound(cand, [M, Y, small]) == 5.0
    assert latency_lower_bound(cand, [M, Y]) == -math.inf
    assert should_prune(cand, [M, Y, small])        # lat(cand) >= 5.0 > 4.0 = lat(Y)
    assert not should_prune(cand, [M, Y])           # no bound: keep


def test_pareto_front_examples():
    recs = [
        {"accuracy": 0.80, "latency_ms": 10.0},  # 0 dominated by 1
        {"accuracy": 0.85, "latency_ms": 4.0},   # 1 front
        {"accuracy": 0.90, "latency_ms": 12.0},  # 2 front
        {"accuracy": 0.70, "latency_ms": 1.0},   # 3 front
        {"accuracy": 0.85, "latency_ms": 5.0},   # 4 dominated by 1 (equal acc, slower)
        {"accuracy": float("nan"), "latency_ms": 0.1},  # 5 skipped
        {"latency_ms": 0.1},                     # 6 skipped
    ]
    assert pareto_front(recs) == [3, 1, 2]      # sorted by latency
    assert pareto_front(recs, maximize=("accuracy",), minimize=()) == [2]


points = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(points)
def test_pareto_front_matches_brute_force(pts):
    recs = [{"accuracy": a / 20, "latency_ms": float(l)} for a, l in pts]
    front = set(pareto_front(recs))
    for i, (a, l) in enumerate(pts):
        dominated = any(b >= a and m <= l and (b > a or m < l) for j, (b, m) in enumerate(pts) if j != i)
        assert (i in front) == (not dominated)
