"""Hyper-parameter search for a FIXED architecture with NNI's ``Experiment`` API (TPE / Evolution / Random).

Searched: learning rate, batch size, head margin and epochs, A-Softmax's lambda start and floor,
and the weights of the readers' soft labels and auxiliary ratings. Each trial is the same entry point as
the nnictl route (``python -m search_spaces.trial``), reading a config written into the run dir;
results land in RUN/trials/ and the same report (trials.csv, pareto.csv, top/) is written.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from naslung.models.config import ModelConfig
from search_spaces.nni_api import SECURITY_WARNING, check_port_free, free_port, require_nni
from search_spaces.report import write_json_atomic, write_report

TUNERS = ("TPE", "Evolution", "Random")


def hpo_search_space(head: str = "asoftmax") -> dict[str, Any]:
    """NNI search space (HPO format); the margin's range depends on the head."""
    space: dict[str, Any] = {
        "lr": {"_type": "loguniform", "_value": [1e-4, 1e-2]},
        "batch_size": {"_type": "choice", "_value": [16, 32, 64]},
        "epochs": {"_type": "choice", "_value": [10, 20, 40]},
    }
    # Learning from every reader (naslung.train.targets); 0 = off.
    space["soft_labels"] = {"_type": "choice", "_value": [0.0, 0.5]}
    space["aux_weight"] = {"_type": "choice", "_value": [0.0, 0.3]}
    if head == "asoftmax":
        space["margin"] = {"_type": "choice", "_value": [1, 2, 3, 4]}        # SphereFace m (integer)
        # lambda by fraction of training (naslung.models.heads.LambdaSchedule)
        space["lambda_start"] = {"_type": "choice", "_value": [100.0, 1500.0]}
        space["lambda_min"] = {"_type": "choice", "_value": [1.0, 5.0, 20.0]}
    elif head == "amsoftmax":
        space["margin"] = {"_type": "uniform", "_value": [0.1, 0.5]}          # additive cosine margin
    return space


def build_hpo_experiment(model: ModelConfig, base: dict[str, Any], data: str | Path, out: str | Path,
                         tuner: str = "TPE", max_trials: int = 20, concurrency: int = 1,
                         search_space: dict[str, Any] | None = None, seed: int = 0):
    """An ``nni.experiment.Experiment`` (not started) whose trials tune ``model``'s training."""
    import yaml

    require_nni()
    from nni.experiment import Experiment

    if tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {TUNERS}, got {tuner!r}")
    out, data = Path(out).resolve(), Path(data).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trial = {**(base.get("trial") or {}), "data": str(data), "out": str(out)}
    cfg_path = out / "hpo_config.yml"
    cfg_path.write_text(yaml.safe_dump({"model": model.to_dict(), "trial": trial, "space": base.get("space") or {}}))
    exp = Experiment("local")
    c = exp.config
    c.experiment_name = "naslung-hpo"
    c.trial_command = f"{sys.executable} -m search_spaces.trial --config {cfg_path}"
    c.trial_code_directory = str(Path(__file__).resolve().parents[1])
    c.experiment_working_directory = str(out / "nni-experiments")
    c.search_space = search_space or hpo_search_space(model.head)
    c.tuner.name = tuner
    c.tuner.class_args = {"optimize_mode": "maximize"} if tuner != "Random" else {"seed": seed}
    if tuner == "Evolution":
        c.tuner.class_args["population_size"] = max(2, min(max_trials, 10))
    c.max_trial_number = int(max_trials)
    c.trial_concurrency = int(concurrency)
    c.trial_gpu_number = 0
    c.training_service.use_active_gpu = False
    return exp


def run_hpo(model: ModelConfig, base: dict[str, Any], data: str | Path, out: str | Path, *, tuner: str = "TPE",
            max_trials: int = 20, concurrency: int = 1, port: int = 8080,
            printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the HPO experiment to its budget, always stop NNI, write the report."""
    from search_spaces.experiment import trial_env

    port = free_port() if port == 0 else port
    check_port_free(port)
    exp = build_hpo_experiment(model, base, data, out, tuner, max_trials, concurrency)
    printer("WARNING: " + SECURITY_WARNING.format(port=port))
    printer(f"HPO experiment {exp.id} ({tuner}) for {model.key}: web UI http://localhost:{port}")
    t0 = time.time()
    try:
        with trial_env():
            exp.run(port=port, wait_completion=True)
    finally:
        exp.stop()
    summary = write_report(out)
    wall = time.time() - t0
    summary.update(experiment_id=exp.id, tuner=tuner, wall_seconds=round(wall, 2))
    write_json_atomic(Path(out) / "summary.json", summary)
    return summary
