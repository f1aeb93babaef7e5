"""Issue 17, item 8: `naslung ensemble --search` refuses to rank members by a search metric measured
on the bundle's own test fold. Candidates' accuracies differ, so ranking would change the choice."""
from __future__ import annotations

import json

import pytest

from naslung.cli.main import build_parser, main
from naslung.data.dataset import PreparedDataset
from naslung.ensemble.selection import Candidate, SelectionOnTestFold, check_search_folds
from naslung.models.config import ModelConfig

ACCS = {"t0": 0.62, "t1": 0.91, "t2": 0.55, "t3": 0.78}  # distinct: ranking decides who is picked
STAGES = {"t0": [[4], [8]], "t1": [[8], [8]], "t2": [[4], [4]], "t3": [[8], [16]]}


def _search_run(root, fold):
    (root / "trials").mkdir(parents=True)
    for seq, (tid, acc) in enumerate(ACCS.items()):
        cfg = ModelConfig(stages=STAGES[tid], in_size=16)
        (root / "trials" / f"{seq:05d}_{tid}.json").write_text(json.dumps(
            {"seq": seq, "trial_id": tid, "status": "SUCCEEDED", "model": cfg.to_dict(), "val_accuracy": acc,
             "latency_ms": 1.0, "fold": fold}))
    return root


def test_ensemble_refuses_a_search_validated_on_the_test_fold(tmp_path, tiny_dataset_dir, capsys):
    k = int(PreparedDataset.load(tiny_dataset_dir).folds.max()) + 1
    run = _search_run(tmp_path / "search", fold=k - 1)  # validates on (k-1 + 1) % k = 0 = the default test fold
    out = tmp_path / "bundle"
    rc = main(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "2", "--epochs", "1",
               "--device", "cpu", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "test fold" in err and "--fold 3" in err.replace(str(k - 1), "3"), err
    assert not out.exists()  # refused before any training


def test_ensemble_ranks_by_accuracy_when_folds_are_clean(tmp_path, tiny_dataset_dir, capsys):
    from naslung.cli.ensemble import _candidates

    ds = PreparedDataset.load(tiny_dataset_dir)
    k = int(ds.folds.max()) + 1
    run = _search_run(tmp_path / "search", fold=k - 1)
    args = build_parser().parse_args(["ensemble", "--search", str(run), "--data", str(tiny_dataset_dir), "--top", "2",
                                      "--fold", str(k - 1), "--out", str(tmp_path / "b")])
    cands, diverse, note = _candidates(args, ds)
    assert [c.info["trial_id"] for c in cands] == ["t1", "t3"]  # the two best accuracies
    assert not diverse and "top by val_accuracy" in note
    assert "note:" not in capsys.readouterr().out  # same fold as the search: nothing to warn about


def _cand(name, fold, acc):
    return Candidate(name, ModelConfig(stages=((4,), (8,)), in_size=16), {"val_accuracy": acc}, info={"fold": fold})


def test_check_search_folds_cases():
    cands = [_cand("a", 2, 0.9), _cand("b", 2, 0.5)]
    with pytest.raises(SelectionOnTestFold, match="fold 3"):
        check_search_folds(cands, test_fold=3, n_folds=5)
    assert check_search_folds(cands, test_fold=2, n_folds=5) == []
    notes = check_search_folds(cands, test_fold=0, n_folds=5)  # 0 was among the search's training folds
    assert len(notes) == 1 and "trained on folds that include" in notes[0]
    notes = check_search_folds([_cand("c", None, 0.7)], test_fold=0, n_folds=5)
    assert "do not record the fold" in notes[0]
    with pytest.raises(SelectionOnTestFold):  # wrap-around: the last fold validates on fold 0
        check_search_folds([_cand("d", 4, 0.8)], test_fold=0, n_folds=5)


def test_inner_fold_searches_are_checked_against_all_their_validation_folds():
    """A search with trial.inner_folds validates on several folds: any of them as the bundle's test fold
    is refused; the search's own outer (held-out) fold is clean."""
    def inner(name, acc):
        return Candidate(name, ModelConfig(stages=((4,), (8,)), in_size=16), {"val_accuracy": acc},
                         info={"fold": 1, "val_folds": [2, 3, 4]})

    cands = [inner("a", 0.8), inner("b", 0.6)]
    for test_fold in (2, 3, 4):
        with pytest.raises(SelectionOnTestFold, match=f"fold {test_fold}"):
            check_search_folds(cands, test_fold=test_fold, n_folds=5)
    assert check_search_folds(cands, test_fold=1, n_folds=5) == []
    # fold 0 was a training fold of every inner split: allowed, with the note
    notes = check_search_folds(cands, test_fold=0, n_folds=5)
    assert len(notes) == 1 and "trained on folds that include" in notes[0]
