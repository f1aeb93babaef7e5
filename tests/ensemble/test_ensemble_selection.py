import json

import numpy as np
import pytest

from naslung.ensemble.selection import (Candidate, disagreement, load_search_candidates, rank, select_diverse,
                                        select_pareto, select_top)
from naslung.models.config import ModelConfig


def cand(stages, acc, auc=0.8, lat=1.0, pareto=False, name=None):
    cfg = ModelConfig(stages=stages, in_size=16)
    return Candidate(name or cfg.key, cfg, {"val_accuracy": acc, "val_auc": auc, "latency_ms": lat}, pareto)


CANDS = [
    cand(((4,), (8,)), 0.70, lat=1.0, pareto=True),
    cand(((8,), (16,)), 0.80, lat=2.0, pareto=True),
    cand(((8,), (16,)), 0.85, lat=2.1),            # same architecture as #1, better score
    cand(((16,), (32,)), 0.90, lat=5.0, pareto=True),
    cand(((8, 8), (16,)), 0.80, auc=0.9, lat=3.0),  # ties #1 on accuracy, wins on AUC
    cand(((4, 4), (8,)), float("nan"), lat=0.5),    # failed metric ranks last
]


def test_rank_orders_by_metric_then_auc_then_latency():
    assert rank(CANDS) == [3, 2, 4, 1, 0, 5]
    assert rank(CANDS, "val_auc")[0] == 4


def test_select_top_skips_repeated_architectures():
    assert select_top(CANDS, 3) == [3, 2, 4]  # #1 repeats #2's architecture
    assert select_top(CANDS, 10) == [3, 2, 4, 0, 5]


def test_select_pareto_takes_front_first_then_fills():
    assert select_pareto(CANDS, 2) == [3, 1]
    assert select_pareto(CANDS, 4) == [3, 1, 0, 4]  # #2 repeats front member #1's architecture


def test_disagreement():
    assert disagreement(np.array([0.9, 0.1, 0.6]), np.array([0.8, 0.7, 0.2])) == pytest.approx(2 / 3)


def test_select_diverse_prefers_complementary_members():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    good_a = np.array([.9, .9, .9, .2, .1, .1, .1, .1])      # wrong on crop 3
    dup_a = good_a.copy()                                     # an exact duplicate of A
    good_b = np.array([.9, .9, .2, .9, .1, .1, .1, .1])      # wrong on crop 2 instead
    p = np.vstack([good_a, dup_a, good_b])
    assert select_diverse(p, y, 2) == [0, 2]
    assert select_diverse(p, y, 2, diversity=0.0) == [0, 2]  # averaging A and B already beats A twice
    assert select_diverse(p, y, 5) == [0, 2, 1]
    assert select_diverse(p, y, 2, first=1)[0] == 1
    with pytest.raises(ValueError, match="labels"):
        select_diverse(p, y[:3], 2)


def test_select_diverse_diversity_weight_changes_the_choice():
    y = np.array([1, 1, 0, 0])
    base = np.array([.8, .8, .2, .2])
    similar = np.array([.75, .75, .25, .25])  # agrees everywhere, slightly worse
    contrarian = np.array([.6, .4, .4, .4])   # disagrees on crop 1
    p = np.vstack([base, similar, contrarian])
    assert select_diverse(p, y, 2, diversity=0.0) == [0, 1]
    assert select_diverse(p, y, 2, diversity=2.0) == [0, 2]


def _write_run(run, records, pareto_ids):
    (run / "trials").mkdir(parents=True)
    for r in records:
        (run / "trials" / f"{r['seq']:05d}_{r['trial_id']}.json").write_text(json.dumps(r))
    cols = "seq,trial_id,status,arch,val_accuracy"
    lines = [cols] + [f"{r['seq']},{r['trial_id']},SUCCEEDED,x,{r['val_accuracy']}" for r in records
                      if r["trial_id"] in pareto_ids]
    (run / "pareto.csv").write_text("\n".join(lines) + "\n")


def test_load_search_candidates_reads_records_and_pareto(tmp_path):
    recs = []
    for seq, (stages, acc) in enumerate([(((4,), (8,)), 0.7), (((8,), (16,)), 0.9), (((8,), (8,)), 0.6)]):
        cfg = ModelConfig(stages=stages, in_size=16)
        recs.append({"seq": seq, "trial_id": f"t{seq}", "status": "SUCCEEDED", "model": cfg.to_dict(),
                     "val_accuracy": acc, "val_auc": 0.8, "latency_ms": 1.0 + seq, "fold": 0,
                     "val_proba": [0.1, 0.9] if seq == 1 else None})
    recs.append({"seq": 3, "trial_id": "t3", "status": "FAILED", "error": "boom"})
    _write_run(tmp_path, recs, {"t0", "t1"})
    cands = load_search_candidates(tmp_path)
    assert [c.info["trial_id"] for c in cands] == ["t0", "t1", "t2"]
    assert [c.pareto for c in cands] == [True, True, False]
    assert cands[1].metrics["val_accuracy"] == 0.9 and cands[1].val_proba.tolist() == [0.1, 0.9]
    assert [cands[i].info["trial_id"] for i in select_top(cands, 2)] == ["t1", "t0"]


def test_load_search_candidates_falls_back_to_top_configs_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_search_candidates(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no succeeded trials"):
        load_search_candidates(tmp_path)
    (tmp_path / "top").mkdir()
    for r, stages in ((1, [[8], [16]]), (2, [[4], [8]])):
        (tmp_path / "top" / f"{r}.json").write_text(json.dumps(ModelConfig(stages=stages, in_size=16).to_dict()))
    cands = load_search_candidates(tmp_path)
    assert [c.config.stages for c in cands] == [((8,), (16,)), ((4,), (8,))]
    assert select_top(cands, 1) == [0]


def test_parameter_budget_passes_over_candidates_that_do_not_fit():
    from naslung.ensemble.selection import Candidate, candidate_params, select_top
    from naslung.models.config import ModelConfig

    def cand(name, auc, params, w):
        return Candidate(name, ModelConfig(stages=((w,), (w,), (w,)), in_size=16),
                         {"val_auc": auc, "params": params})

    cands = [cand("a", 0.90, 3_000_000, 4), cand("b", 0.89, 1_500_000, 8), cand("c", 0.88, 900_000, 16),
             cand("d", 0.87, 400_000, 32)]
    assert select_top(cands, 3, "val_auc") == [0, 1, 2]
    assert select_top(cands, 3, "val_auc", max_params=5_000_000) == [0, 1, 3]   # c would make 5.4 M
    assert select_top(cands, 3, "val_auc", max_params=1_000_000) == [2]          # only c fits (d after it: 1.3 M)
    # without a recorded count the built network is counted
    bare = Candidate("e", ModelConfig(stages=((4,), (4,), (8,)), in_size=16), {})
    assert 0 < candidate_params(bare) < 100_000
