"""The space's constraints, exact uniform sampling, repair and encoding (no NNI)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from naslung.models.config import ModelConfig
from search_spaces.space import (Arch, SpaceSpec, decode, depth_label, encode, encoding_labels, enumerate_archs,
                                 is_valid, mutate, repair, sample_arch, violations, width_label)

PAPER = SpaceSpec()
SMALL = SpaceSpec(widths=(4, 8, 16), min_blocks=3, max_blocks=5, heads=("asoftmax", "softmax"), cbam=("naslung",))


def test_paper_space_size_matches_enumeration_formula():
    # sum over n=3..9 of C(n+5,5) * C(n-1,2) = 101529 width/split choices, times 3 heads x 4 CBAM variants
    assert PAPER.count() == 101529 * 12
    assert SMALL.count() == sum(1 for _ in enumerate_archs(SMALL))


def test_enumerated_architectures_are_exactly_the_valid_ones():
    archs = list(enumerate_archs(SMALL))
    assert len({a.key for a in archs}) == len(archs)
    assert all(is_valid(a, SMALL) for a in archs)


@pytest.mark.parametrize("arch, problem", [
    (Arch(((8,), (4,), (16,))), "decrease"),
    (Arch(((4, 4), (8,))), "stages"),
    (Arch(((4,), (), (8,))), "no block"),
    (Arch(((4,), (8,), (16,)), head="nope"), "head"),
    (Arch(((4,), (8,), (12,))), "not in"),
    (Arch(((4, 4, 4), (8, 8), (16,))), "blocks"),  # 6 > SMALL.max_blocks
])
def test_violations_name_the_problem(arch, problem):
    assert any(problem in v for v in violations(arch, SMALL))


def test_spec_rejects_impossible_bounds():
    with pytest.raises(ValueError, match="min_blocks"):
        SpaceSpec(min_blocks=2)
    with pytest.raises(ValueError, match="heads"):
        SpaceSpec(heads=("arcface",))
    with pytest.raises(ValueError, match="unknown search-space fields"):
        SpaceSpec.from_dict({"width": [4]})


def test_sampler_is_valid_and_uniform():
    rng = np.random.default_rng(0)
    n_archs = SMALL.count()
    draws = 60 * n_archs
    counts = Counter(sample_arch(SMALL, rng).key for _ in range(draws))
    assert all(is_valid(a, SMALL) for a in enumerate_archs(SMALL))
    assert len(counts) == n_archs  # every architecture is reachable
    observed = np.array(list(counts.values()), dtype=float)
    chi2 = ((observed - 60) ** 2 / 60).sum()
    # chi-square with n-1 dof: mean n-1, sd sqrt(2(n-1)); 6 sd is a generous bound for a uniform draw
    assert chi2 < (n_archs - 1) + 6 * np.sqrt(2 * (n_archs - 1)), chi2


def test_paper_sampler_reaches_deep_networks():
    rng = np.random.default_rng(1)
    depths = Counter(len(sample_arch(PAPER, rng).flat) for _ in range(2000))
    # most of the paper's space is 8-9 blocks deep: a rejection sampler would rarely produce these
    assert abs(depths[9] / 2000 - 56056 / 101529) < 0.05  # exact share of 9-block architectures
    assert set(depths) >= set(range(4, 10))


def test_encode_decode_roundtrip():
    rng = np.random.default_rng(2)
    for _ in range(200):
        a = sample_arch(PAPER, rng)
        s = encode(a, PAPER)
        assert sorted(s) == sorted(encoding_labels(PAPER))
        assert decode(s, PAPER) == a
        assert repair(s, PAPER) == s  # valid, canonical samples are left alone


samples = st.fixed_dictionaries({
    **{depth_label(i): st.integers(1, PAPER.max_stage_depth) for i in range(3)},
    **{width_label(i): st.sampled_from(PAPER.widths) for i in range(PAPER.max_blocks)},
    "head": st.sampled_from(PAPER.heads), "cbam": st.sampled_from(PAPER.cbam)})


@settings(max_examples=300, deadline=None)
@given(samples)
def test_repair_always_gives_a_valid_canonical_sample(sample):
    fixed = repair(sample, PAPER)
    arch = decode(fixed, PAPER)
    assert violations(arch, PAPER) == []
    assert repair(fixed, PAPER) == fixed
    n = len(arch.flat)
    # the widths of the blocks kept are the sampled ones, sorted (repair does not invent widths)
    assert list(arch.flat) == sorted(sample[width_label(i)] for i in range(n))


def test_mutate_stays_in_space_and_moves():
    rng = np.random.default_rng(3)
    a = sample_arch(PAPER, rng)
    children = [mutate(a, PAPER, rng, prob=0.3) for _ in range(100)]
    assert all(is_valid(c, PAPER) for c in children)
    assert any(c != a for c in children)


def test_arch_becomes_the_shared_model_config():
    a = Arch(((4, 8), (8, 16, 16), (32,)), head="softmax", cbam="original")
    cfg = a.to_config(SpaceSpec(in_size=16, stem_width=8))
    assert isinstance(cfg, ModelConfig)
    assert cfg.stages == ((4, 8), (8, 16, 16), (32,)) and cfg.in_size == 16 and cfg.stem_width == 8
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert Arch.from_config(cfg) == a
    assert cfg.key == a.key
