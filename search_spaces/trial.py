"""One search trial: train a sampled architecture on one fold, score it on the VALIDATION fold only,
profile it, write its record, report to NNI.

Two ways in, one core (:func:`run_trial`):

- NAS experiments (``naslung search``): NNI's ``FunctionalEvaluator`` calls :func:`evaluate_model`
  with the frozen :class:`~search_spaces.model_space.NasLungSpace` (which carries ``model_config``).
- ``nnictl create --config examples/search.yml``: NNI runs ``python -m search_spaces.trial`` whose
  parameters come from our tuner (:mod:`search_spaces.tuner`: an encoded architecture) or from an
  HPO tuner (:mod:`search_spaces.hpo`: lr, batch size, margin, epochs for a fixed architecture).

The test fold is never evaluated (``eval_test=False``). The prepared dataset is loaded once per
trial process and handed to the trainer, which keeps it on the device for the whole trial.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from naslung.configio import strict_from_dict
from naslung.models.config import ModelConfig
from search_spaces.report import write_json_atomic

log = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "auc")


@dataclass
class TrialSpec:
    """Everything a trial needs besides the architecture; plain JSON so NNI can ship it."""

    data: str
    out: str | None = None                 # run dir: the record goes to out/trials/
    fold: int = 0                          # outer fold: its test fold is never trained on nor evaluated
    inner_folds: int = 1                   # validation folds the objective averages (1 = fold+1 only)
    train: dict[str, Any] = field(default_factory=dict)   # TrainConfig fields
    device: str = "auto"
    objective: str = "accuracy"            # NNI's "default" metric: validation accuracy or AUC
    latency: dict[str, Any] = field(default_factory=lambda: {"batch_size": 1, "warmup": 5, "repeats": 20})
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"margin": 3}
    asoftmax_margin: int | None = None     # A-Softmax m for sampled asoftmax nets (None: the head's default, 4)
    threads: int | None = None             # torch CPU threads per trial (concurrent CPU trials: 1)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if isinstance(self.inner_folds, bool) or not isinstance(self.inner_folds, int) or self.inner_folds < 1:
            raise ValueError(f"trial.inner_folds must be an integer >= 1, got {self.inner_folds!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialSpec":
        return strict_from_dict(cls, d, "trial")


_DATA: dict[tuple[str, str], Any] = {}


def load_dataset(path: str | Path, device: str = "cpu"):
    """(PreparedDataset, DeviceData) loaded once per process; the crops live on ``device`` from then on."""
    from naslung.data.dataset import PreparedDataset
    from naslung.train import DeviceData

    key = (str(Path(path).resolve()), str(device))
    if key not in _DATA:
        t0 = time.perf_counter()
        ds = PreparedDataset.load(key[0])
        _DATA[key] = (ds, DeviceData.from_dataset(ds, device))
        log.info("loaded %s (%d crops) onto %s in %.2fs", key[0], len(ds), device, time.perf_counter() - t0)
    return _DATA[key]


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


PROGRESS_DIR = "progress"  # RUN/progress/<seq>_<trial_id>.json: the epochs a running trial has finished
_TRAINER_LOGGER = "naslung.train.trainer"


class _EpochTap(logging.Filter):
    """Hands the per-epoch record that ``naslung.train.trainer`` logs at DEBUG level to a callback.

    The trainer has no epoch callback; it logs ``("fold %d epoch %d %s", fold, epoch, record)`` after
    every epoch. This filter sits on that logger, passes each such record dict on, and lets through
    only what the logger's previous level would have let through (so no DEBUG lines appear).
    """

    def __init__(self, callback: Callable[[dict[str, Any]], None], pass_level: int) -> None:
        super().__init__()
        self.callback, self.pass_level = callback, pass_level

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[-1], dict) and "epoch" in args[-1] \
                and "val_acc" in args[-1]:
            try:
                self.callback(dict(args[-1]))
            except Exception as e:  # noqa: BLE001 - progress reporting must never kill a trial
                log.warning("epoch progress callback failed: %s", e)
        return record.levelno >= self.pass_level


@contextlib.contextmanager
def epoch_callback(callback: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """While inside, ``callback(record)`` runs after every training epoch (train/val loss, acc, AUC, seconds)."""
    logger = logging.getLogger(_TRAINER_LOGGER)
    old_level = logger.level
    tap = _EpochTap(callback, logger.getEffectiveLevel())
    logger.addFilter(tap)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeFilter(tap)
        logger.setLevel(old_level)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def epoch_line(epoch: int, epochs: int, rec: Mapping[str, Any]) -> str:
    fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
    return (f"epoch {epoch}/{epochs}  train loss {fmt(_num(rec.get('train_loss')), '%.3f')}  "
            f"val acc {fmt(_num(rec.get('val_acc')), '%.3f')} auc {fmt(_num(rec.get('val_auc')), '%.3f')}  "
            f"({fmt(_num(rec.get('seconds')), '%.1f')} s)")


class _EpochReporter:
    """Per epoch: a line on the trial's stdout, RUN/progress/<seq>_<id>.json, and NNI's intermediate result.

    With several inner folds the steps run on: fold ``i``'s epoch ``e`` is step ``i * epochs + e``.
    The value sent to NNI at each step is the objective as it stands: the finished inner folds'
    final values and the running fold's current value, averaged. All trials of a search share the
    schedule, so step ``s`` means the same thing in every trial -- which is what an early-stopping
    rule comparing trials step by step (:mod:`search_spaces.assessor`) needs. Every intermediate
    result carries the trial's id and sequence number: the assessor, in the experiment process,
    learns from them which NNI trial to stop, on any training service.
    """

    def __init__(self, spec: TrialSpec, model_cfg: ModelConfig, epochs: int, seq: int, trial_id: str,
                 nni_report: Callable[[dict[str, Any]], None] | None) -> None:
        self.spec, self.epochs, self.nni_report = spec, epochs, nni_report
        self.key = "val_acc" if spec.objective == "accuracy" else "val_auc"
        self.state = {"seq": int(seq), "trial_id": str(trial_id), "arch": model_cfg.key, "epochs": epochs,
                      "inner_folds": int(spec.inner_folds), "steps": int(spec.inner_folds) * int(epochs),
                      "started": time.time(), "history": []}
        self.inner, self.finished = 0, []   # running inner fold; objective of the finished ones
        self.path = Path(spec.out) / PROGRESS_DIR / f"{int(seq):05d}_{trial_id}.json" if spec.out else None
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.state)

    def next_fold(self, finished_value: float | None) -> None:
        """The running inner fold ended with objective ``finished_value``; the next one starts."""
        self.finished.append(finished_value if finished_value is not None else 0.0)
        self.inner += 1

    def __call__(self, rec: dict[str, Any]) -> None:
        epoch = int(rec.get("epoch", 0))
        h = {"epoch": epoch, "inner_fold": self.inner, "step": self.inner * self.epochs + epoch,
             **{k: _num(rec.get(k)) for k in ("train_loss", "val_loss", "val_acc", "val_auc", "seconds")}}
        current = h[self.key] if h[self.key] is not None else 0.0
        h["objective"] = (sum(self.finished) + current) / (len(self.finished) + 1)
        self.state["history"].append(h)
        self._write()
        fold_note = f"[inner {self.inner + 1}/{self.spec.inner_folds}] " if self.spec.inner_folds > 1 else ""
        print(f"{self.state['arch']}  {fold_note}" + epoch_line(epoch, self.epochs, h), flush=True)
        if self.nni_report is not None:
            self.nni_report({"default": h["objective"], "val_accuracy": h["val_acc"], "val_auc": h["val_auc"],
                             "train_loss": h["train_loss"], "epoch": epoch, "inner_fold": self.inner,
                             "step": h["step"], "steps": self.state["steps"], "seconds": h["seconds"],
                             "trial_id": self.state["trial_id"], "seq": self.state["seq"],
                             "arch": self.state["arch"]})


def run_trial(model_cfg: ModelConfig, spec: TrialSpec, *, seq: int = 0, trial_id: str = "STANDALONE",
              nni_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``model_cfg`` on ``spec.fold``, return (and write) the trial record."""
    from naslung.models.profile import profile_model
    from naslung.data.folds import inner_splits
    from naslung.train.config import TrainConfig
    from naslung.train.trainer import train_on_split

    t_start = time.perf_counter()
    if spec.threads:
        import torch

        torch.set_num_threads(int(spec.threads))
    if spec.asoftmax_margin is not None and model_cfg.head == "asoftmax":
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "margin": int(spec.asoftmax_margin)})
    if spec.model_overrides:
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), **spec.model_overrides})
    device = _resolve_device(spec.device)
    ds, device_data = load_dataset(spec.data, device)
    if model_cfg.in_size != ds.spec.size:
        model_cfg = ModelConfig.from_dict({**model_cfg.to_dict(), "in_size": ds.spec.size})
    train_cfg = TrainConfig.from_dict({**spec.train, "device": device})
    t_train = time.perf_counter()
    reporter = _EpochReporter(spec, model_cfg, train_cfg.epochs, seq, trial_id, nni_report)
    splits = inner_splits(ds.folds, spec.fold, spec.inner_folds)
    results = []
    with epoch_callback(reporter):
        for i, split in enumerate(splits):
            res = train_on_split(device_data, model_cfg, train_cfg, split.train, split.val, None,
                                 fold=split.fold, progress=False)
            if res.test_metrics is not None:  # defensive: a search must never see the test fold
                raise RuntimeError("train_on_split returned test metrics during a search trial")
            results.append(res)
            if i + 1 < len(splits):
                reporter.next_fold(_num(res.val_metrics.get(spec.objective)))
    train_seconds = time.perf_counter() - t_train
    val = _mean_metrics([r.val_metrics for r in results])
    prof = profile_model(model_cfg, device, ds.spec.size, **spec.latency)
    history = [h for r in results for h in (r.history or [])]
    record = {
        "seq": int(seq),
        "trial_id": str(trial_id),
        "status": "SUCCEEDED",
        "arch": model_cfg.key,
        "stages": [list(s) for s in model_cfg.stages],
        "n_blocks": model_cfg.n_blocks,
        "head": model_cfg.head,
        "cbam": model_cfg.cbam,
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "fold": spec.fold,                 # the outer fold: its test fold was never used
        "val_folds": [int(sp.fold) for sp in splits],
        "inner_folds": len(splits),
        "val_inner": [{k: r.val_metrics.get(k) for k in ("accuracy", "auc", "n")} for r in results],
        "lr": train_cfg.lr,
        "batch_size": train_cfg.batch_size,
        "epochs": train_cfg.epochs,
        "margin": model_cfg.margin,
        **{f"val_{k}": val.get(k) for k in ("accuracy", "auc", "sensitivity", "specificity", "f1", "n")},
        "params": prof["params"],
        "flops": prof["flops"],
        "latency_ms": prof["latency_ms"],
        "latency_device": prof["device"],
        "latency_batch_size": prof.get("batch_size", 1),
        "epochs_run": len(history),
        "steps_planned": len(splits) * int(train_cfg.epochs),
        "train_seconds": round(train_seconds, 3),
        "trial_seconds": round(time.perf_counter() - t_start, 3),
        "device": device,
        "pid": os.getpid(),
        # Validation predictions, for diversity-aware ensemble selection (naslung.ensemble.selection).
        # Inner validation folds are disjoint: together, one out-of-fold prediction per crop.
        "val_ids": [ds.ids[int(i)] for r in results for i in r.val_idx],
        "val_proba": [round(float(p[1]), 6) for r in results for p in r.val_proba],
    }
    record = _json_safe(record)
    if spec.out:
        write_json_atomic(Path(spec.out) / "trials" / f"{int(seq):05d}_{trial_id}.json", record)
    return record


def _mean_metrics(per_fold: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Inner folds' validation metrics averaged (``n`` summed); a metric missing anywhere stays None."""
    out: dict[str, Any] = {}
    for k in ("accuracy", "auc", "sensitivity", "specificity", "f1"):
        vals = [_num(m.get(k)) for m in per_fold]
        out[k] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    out["n"] = sum(int(m.get("n") or 0) for m in per_fold)
    return out


def _json_safe(obj: Any) -> Any:
    from naslung.train.metrics import json_safe

    return json_safe(obj)


def nni_metric(record: Mapping[str, Any], objective: str = "accuracy") -> dict[str, Any]:
    """The final-result dict sent to NNI: ``default`` is the objective (NaN-free), the rest for the UI."""
    value = record.get(f"val_{objective}")
    default = float(value) if value is not None else 0.0
    return {
        "default": default,
        "val_accuracy": record.get("val_accuracy"),
        "val_auc": record.get("val_auc"),
        "latency_ms": record.get("latency_ms"),
        "params": record.get("params"),
        "flops": record.get("flops"),
        "arch": record.get("arch"),
        "trial_id": record.get("trial_id"),
        "seq": record.get("seq"),
    }


def _nni_ids() -> tuple[int, str]:
    import nni

    return int(nni.get_sequence_id()), str(nni.get_trial_id())


def evaluate_model(model: Any, **spec_kwargs: Any) -> None:
    """NNI ``FunctionalEvaluator`` target: ``model`` is a frozen NasLungSpace."""
    import nni

    spec = TrialSpec.from_dict(spec_kwargs)
    seq, trial_id = _nni_ids()
    try:
        record = run_trial(model.model_config, spec, seq=seq, trial_id=trial_id,
                           nni_report=nni.report_intermediate_result)
    except Exception as e:
        write_failure(spec, model.model_config, seq, trial_id, e)
        raise
    nni.report_final_result(nni_metric(record, spec.objective))


def write_failure(spec: TrialSpec, model_cfg: ModelConfig, seq: int, trial_id: str, error: BaseException) -> None:
    """A FAILED record, so trials.csv lists every trial (NNI's UI has the traceback)."""
    if spec.out:
        write_json_atomic(Path(spec.out) / "trials" / f"{int(seq):05d}_{trial_id}.json", {
            "seq": int(seq), "trial_id": str(trial_id), "status": "FAILED", "arch": model_cfg.key,
            "stages": [list(s) for s in model_cfg.stages], "n_blocks": model_cfg.n_blocks,
            "head": model_cfg.head, "cbam": model_cfg.cbam, "model": model_cfg.to_dict(),
            "error": f"{type(error).__name__}: {error}"})


# --------------------------------------------------------------------- nnictl entry point
def _params_to_trial(params: Mapping[str, Any], cfg: Mapping[str, Any]) -> tuple[ModelConfig, TrialSpec]:
    """Turn NNI parameters into (architecture, trial spec) for either kind of nnictl experiment."""
    from search_spaces.space import SpaceSpec, decode, violations

    trial = dict(cfg.get("trial", {}))
    spec_space = SpaceSpec.from_dict(cfg.get("space"))
    params = dict(params)
    if "s0_depth" in params:  # an architecture from search_spaces.tuner.NasLungTuner
        arch = decode(params, spec_space)
        problems = violations(arch, spec_space)
        if problems:  # the tuner repairs before sending; reaching here means a foreign tuner was used
            raise ValueError(f"architecture {arch.key} is outside the space: {'; '.join(problems)}; "
                             f"use search_spaces.tuner.NasLungTuner, which never emits one")
        model_cfg = arch.to_config(spec_space)
    else:  # HPO over a fixed architecture (search_spaces.hpo)
        model_cfg = _fixed_model(cfg)
        train = dict(trial.get("train", {}))
        for k, cast in (("lr", float), ("weight_decay", float), ("batch_size", int), ("epochs", int),
                        ("lambda_start", float), ("lambda_min", float), ("lambda_floor_at", float),
                        ("soft_labels", float), ("aux_weight", float)):
            if k in params:
                train[k] = cast(params[k])
        trial["train"] = train
        if "margin" in params:
            trial["model_overrides"] = {**trial.get("model_overrides", {}), "margin": params["margin"]}
    return model_cfg, TrialSpec.from_dict(trial)


def _fixed_model(cfg: Mapping[str, Any]) -> ModelConfig:
    model = cfg.get("model")
    if model is None:
        raise ValueError("HPO needs `model:` in the config (a registry name or a ModelConfig JSON path)")
    if isinstance(model, dict):
        return ModelConfig.from_dict(model)
    if str(model).endswith(".json"):
        return ModelConfig.from_file(model)
    from naslung.models import get_config

    return get_config(str(model))


def main(argv: list[str] | None = None) -> int:
    """``python -m search_spaces.trial --config search.yml [--data DIR] [--out RUN]`` under nnictl."""
    import yaml

    from search_spaces.nni_api import require_nni

    p = argparse.ArgumentParser(prog="python -m search_spaces.trial", description=main.__doc__)
    p.add_argument("--config", required=True, help="the search YAML (space, trial) shared with naslung search")
    p.add_argument("--data", help="prepared dataset dir (overrides trial.data)")
    p.add_argument("--out", help="run dir for trial records (overrides trial.out)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    nni = require_nni()
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    cfg.setdefault("trial", {})
    if args.data:
        cfg["trial"]["data"] = args.data
    if args.out:
        cfg["trial"]["out"] = args.out
    if not cfg["trial"].get("data"):
        raise SystemExit(f"{args.config}: trial.data is not set and --data was not given")
    params = nni.get_next_parameter() or {}
    model_cfg, spec = _params_to_trial(params, cfg)
    seq, trial_id = _nni_ids()
    try:
        record = run_trial(model_cfg, spec, seq=seq, trial_id=trial_id, nni_report=nni.report_intermediate_result)
    except Exception as e:
        write_failure(spec, model_cfg, seq, trial_id, e)
        raise
    nni.report_final_result(nni_metric(record, spec.objective))
    print(json.dumps({k: record[k] for k in ("arch", "val_accuracy", "val_auc", "latency_ms", "params")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
