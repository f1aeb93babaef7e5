"""The run directory report (trials.csv, pareto.csv, plot, top configs) from trial records on disk."""
from __future__ import annotations

import csv
import json

from naslung.models.config import ModelConfig
from search_spaces.report import write_json_atomic, write_report
from search_spaces.space import Arch, SpaceSpec


def _record(seq, stages, acc, lat, status="SUCCEEDED", auc=0.8):
    cfg = Arch(stages).to_config(SpaceSpec(in_size=16))
    return {"seq": seq, "trial_id": f"t{seq}", "status": status, "arch": cfg.key, "model": cfg.to_dict(),
            "stages": [list(s) for s in stages], "val_accuracy": acc, "val_auc": auc, "latency_ms": lat,
            "params": 1000 * (seq + 1), "flops": 10 ** 6, "latency_device": "cpu"}


def test_report_from_records(tmp_path):
    recs = [
        _record(0, ((4,), (8,), (8,)), 0.70, 1.0),
        _record(1, ((8,), (16,), (16,)), 0.80, 2.0),
        _record(2, ((8, 8), (16,), (32,)), 0.75, 3.0),   # dominated by 1
        _record(3, ((16,), (32,), (64,)), 0.90, 5.0),
        _record(4, ((4,), (4,), (4,)), None, None, status="FAILED"),
    ]
    for r in recs:
        write_json_atomic(tmp_path / "trials" / f"{r['seq']:05d}_{r['trial_id']}.json", r)
    summary = write_report(tmp_path, top_k=2)
    assert summary["trials"] == 5 and summary["succeeded"] == 4 and summary["failed"] == 1
    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["seq"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert json.loads(rows[0]["stages"]) == [[4], [8], [8]]
    with open(tmp_path / "pareto.csv") as f:
        front = [r["seq"] for r in csv.DictReader(f)]
    assert front == ["0", "1", "3"]
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top1 = ModelConfig.from_file(tmp_path / "top" / "1.json")
    top2 = ModelConfig.from_file(tmp_path / "top" / "2.json")
    assert top1.stages == ((16,), (32,), (64,)) and top2.stages == ((8,), (16,), (16,))
    assert not (tmp_path / "top" / "3.json").exists()


def test_report_survives_an_empty_or_broken_run(tmp_path):
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "00000_x.json").write_text("{not json")
    summary = write_report(tmp_path)
    assert summary["trials"] == 0 and summary["pareto"] == 0
    with open(tmp_path / "pareto.csv") as f:
        assert list(csv.DictReader(f)) == []
