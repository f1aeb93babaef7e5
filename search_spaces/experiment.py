"""Run a NAS experiment: search config (YAML) + prepared data in, a search run directory out.

This is the "search space in, trial results out" interface the CLI uses::

    summary = run_search(SearchConfig.from_file("examples/search_naslung.yml"), data="runs/data",
                         out="runs/search")

It builds :class:`~search_spaces.model_space.NasLungSpace`, a ``FunctionalEvaluator`` around
:func:`search_spaces.trial.evaluate_model`, one of our strategies, and an NNI ``NasExperiment`` on
the local training service (``trial_concurrency``, GPUs, several trials per GPU); it always stops
the experiment (NNI manager included), then writes the report (:mod:`search_spaces.report`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from search_spaces.assessor import AssessorOptions, EarlyStopping, StoppedTrial, make_assessor
from search_spaces.nni_api import (SECURITY_WARNING, check_port_free, free_port, patch_nas_resume, require_nni,
                                   venv_bin_first)
from search_spaces.report import load_records, write_json_atomic, write_report
from search_spaces.space import SpaceSpec
from search_spaces.trial import PROGRESS_DIR, TrialSpec, epoch_line
from search_spaces.training_services import (code_directory, configure_training_service, load_hosts, preflight,
                                             require_platform, resolve_concurrency, trial_code_directory)

log = logging.getLogger(__name__)


@dataclass
class ExperimentOptions:
    """NNI experiment and local training-service options (CLI flags override these)."""

    max_trials: int = 20
    trial_concurrency: int | None = None   # None = every slot: GPUs x trials_per_gpu, the hosts' slots, else 1
    gpus: list[int] | None = None          # GPU indices for trials; None = CPU trials
    trials_per_gpu: int = 1                # NNI's maxTrialNumberPerGpu (several small trials share a GPU)
    port: int = 8080                       # 0 = pick a free port
    max_duration: str | None = None        # e.g. "2h"
    max_trial_duration: str | None = None  # e.g. "30m": NNI kills a trial that runs longer
    name: str = "naslung-search"
    platform: str = "local"                # local | remote (NNI's SSH training service; docs/scale-out.md)
    hosts: str | None = None               # remote: hosts.yml (search_spaces.training_services.load_hosts)
    manager_ip: str | None = None          # the address trials reach NNI's manager at (remote: required in practice)


@dataclass
class StrategyOptions:
    name: str = "pop"                      # pop | random | evolution
    seed: int = 0
    candidate_latency: str = "measure"     # pop: "measure" candidates (paper) or "bound" (no measurement)
    patience: int | None = None            # pop: stop when the Pareto set is unchanged this long
    population_size: int = 20              # evolution
    sample_size: int = 5                   # evolution
    mutation_prob: float = 0.2             # evolution


@dataclass
class SearchConfig:
    space: dict[str, Any] = field(default_factory=dict)
    strategy: StrategyOptions = field(default_factory=StrategyOptions)
    trial: dict[str, Any] = field(default_factory=dict)        # TrialSpec fields except data/out
    experiment: ExperimentOptions = field(default_factory=ExperimentOptions)
    assessor: AssessorOptions = field(default_factory=AssessorOptions)    # early stopping (off by default)
    top_k: int = 5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"model"}  # `model:` is read by the HPO route only
        if unknown:
            raise ValueError(f"unknown search-config sections: {sorted(unknown)} (known: {sorted(known)})")

        def section(cls_, key):
            raw = dict(d.get(key) or {})
            bad = set(raw) - {f.name for f in fields(cls_)}
            if bad:
                raise ValueError(f"unknown fields in `{key}:`: {sorted(bad)}")
            return cls_(**raw)

        cfg = cls(space=dict(d.get("space") or {}), strategy=section(StrategyOptions, "strategy"),
                  trial=dict(d.get("trial") or {}), experiment=section(ExperimentOptions, "experiment"),
                  assessor=section(AssessorOptions, "assessor"), top_k=int(d.get("top_k", 5)))
        SpaceSpec.from_dict(cfg.space)  # validate early, with the field names in the message
        if cfg.strategy.candidate_latency not in ("measure", "bound"):
            raise ValueError("strategy.candidate_latency must be 'measure' or 'bound'")
        require_platform(cfg.experiment.platform)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "SearchConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"search config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"search config {path} is not valid YAML: {e}") from None
        try:
            cfg = cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"search config {path}: {e}") from None
        if cfg.experiment.hosts and not Path(cfg.experiment.hosts).expanduser().is_absolute():
            cfg.experiment.hosts = str(path.resolve().parent / cfg.experiment.hosts)  # relative to the YAML file
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _data_crop_size(data: Path) -> int:
    import json

    from naslung.data.dataset import DatasetError

    info = data / "dataset.json"
    if not info.is_file():
        raise DatasetError(f"{data}: not a prepared dataset (dataset.json missing); "
                           f"create one with `naslung prepare --out {data}`")
    return int(json.loads(info.read_text())["crop_spec"]["size"])


def _latency_fn(spec: TrialSpec, space: SpaceSpec) -> Callable[[Any], float]:
    """Candidate latency for partial-order pruning, measured like the trials measure theirs."""
    from naslung.models.profile import profile_model
    from search_spaces.trial import _resolve_device

    device = _resolve_device(spec.device)
    cache: dict[str, float] = {}

    def measure(arch) -> float:
        if arch.key not in cache:
            cache[arch.key] = float(profile_model(arch.to_config(space), device, space.in_size,
                                                  **spec.latency)["latency_ms"])
        return cache[arch.key]

    return measure


class _Progress(threading.Thread):
    """Prints one line per finished trial (records appear under RUN/trials as trials end)."""

    def __init__(self, run_dir: Path, total: int, printer: Callable[[str], None], interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.total, self.printer, self.interval = run_dir, total, printer, interval
        self.stop_event = threading.Event()
        # Records already on disk (a resumed run) are not news.
        self.seen: set[str] = {f"{r.get('seq')}_{r.get('trial_id')}" for r in load_records(run_dir)}
        self.done_before = len(self.seen)
        self.t0 = time.time()
        self.epochs_seen: dict[str, int] = {k: len(v.get("history", [])) for k, v in self._progress().items()}

    def _progress(self) -> dict[str, dict]:
        import json

        out = {}
        for p in sorted((self.run_dir / PROGRESS_DIR).glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now; next poll
        return out

    def poll_epochs(self) -> None:
        """A line when a trial starts training and one per finished epoch (RUN/progress/*.json)."""
        for key, st in self._progress().items():
            history = st.get("history", [])
            n_seen = self.epochs_seen.get(key)
            label = f"      trial {st.get('seq', '?')} {st.get('arch', '?')}"
            if n_seen is None:
                self.printer(f"{label}: training {st.get('epochs', '?')} epoch(s)")
                n_seen = 0
            inner = int(st.get("inner_folds") or 1)
            for h in history[n_seen:]:
                fold_note = f"[inner {int(h.get('inner_fold', 0)) + 1}/{inner}] " if inner > 1 else ""
                self.printer(f"{label}  {fold_note}" + epoch_line(h.get("epoch", 0), st.get("epochs", 0), h))
            self.epochs_seen[key] = len(history)

    def poll(self) -> None:
        self.poll_epochs()
        for r in load_records(self.run_dir):
            key = f"{r.get('seq')}_{r.get('trial_id')}"
            if key in self.seen:
                continue
            self.seen.add(key)
            hours = max(time.time() - self.t0, 1e-9) / 3600
            rate = (len(self.seen) - self.done_before) / hours
            acc, auc, lat = r.get("val_accuracy"), r.get("val_auc"), r.get("latency_ms")
            fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"  # noqa: E731
            if r.get("status") == "EARLY_STOPPED":
                self.printer(f"[{len(self.seen):>3}/{self.total}] EARLY_STOPPED {r.get('arch', '?'):<40} at step "
                             f"{r.get('stopped_at_step')}/{r.get('steps_planned')}, objective "
                             f"{fmt(r.get('objective_at_stop'), '%.3f')} (saves ~"
                             f"{fmt(r.get('seconds_saved_est'), '%.0f')} s)  {rate:.1f} trials/h")
                continue
            self.printer(f"[{len(self.seen):>3}/{self.total}] {r.get('status', '?'):<9} {r.get('arch', '?'):<40} "
                         f"val acc {fmt(acc, '%.3f')} auc {fmt(auc, '%.3f')} lat {fmt(lat, '%.2f')} ms "
                         f"({fmt(r.get('trial_seconds'), '%.0f')} s)  {rate:.1f} trials/h")

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - progress must never kill the search
                log.debug("progress poll failed: %s", e)


@contextlib.contextmanager
def trial_env() -> Iterator[None]:
    """While NNI runs: venv bin first on PATH (nnictl, python), our sources on PYTHONPATH.

    NNI's manager and its trials inherit this process's environment; the previous values are
    restored afterwards so library callers see no lasting change.
    """
    saved = {k: os.environ.get(k) for k in ("PATH", "PYTHONPATH", "PYTHONUNBUFFERED")}
    os.environ.update(venv_bin_first())
    src_root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src_root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([src_root] + paths)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sigterm_as_interrupt():
    """`kill PID` stops the search like Ctrl-C: NNI's manager (own process group) is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def build_experiment(cfg: SearchConfig, data: str | Path, out: str | Path, exp_id: str | None = None):
    """The NasExperiment (not started) plus the strategy object, for callers that drive NNI themselves."""
    require_nni()
    patch_nas_resume()
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig

    from search_spaces.model_space import NasLungSpace
    from search_spaces.strategies import make_strategy
    from search_spaces.trial import evaluate_model

    data, out = Path(data).resolve(), Path(out).resolve()
    space = SpaceSpec.from_dict({**cfg.space, "in_size": _data_crop_size(data)})
    trial = TrialSpec.from_dict({**cfg.trial, "data": str(data), "out": str(out)})
    st = cfg.strategy
    if st.name == "pop":
        strategy = make_strategy("pop", seed=st.seed, patience=st.patience,
                                 latency_fn=_latency_fn(trial, space) if st.candidate_latency == "measure" else None)
    elif st.name == "evolution":
        strategy = make_strategy("evolution", seed=st.seed, population_size=st.population_size,
                                 sample_size=st.sample_size, mutation_prob=st.mutation_prob)
    else:
        strategy = make_strategy(st.name, seed=st.seed)
    if cfg.assessor.enabled:
        strategy.early_stopping = _early_stopping(cfg.assessor, trial, out)
    evaluator = FunctionalEvaluator(evaluate_model, **asdict(trial))
    ex = cfg.experiment
    hosts = load_hosts(ex.hosts) if ex.hosts else None
    config = NasExperimentConfig("ts", "simplified", ex.platform)
    config.experiment_name = ex.name
    config.max_trial_number = int(ex.max_trials)
    config.trial_concurrency = resolve_concurrency(ex.trial_concurrency, ex.gpus, ex.trials_per_gpu, hosts)
    config.experiment_working_directory = str(out / "nni-experiments")
    # NNI requires the current directory here (run_search works in it while NNI runs)
    config.trial_code_directory = str(code_directory(ex.platform, out))
    if ex.max_duration:
        config.max_experiment_duration = ex.max_duration
    if ex.max_trial_duration:
        config.max_trial_duration = ex.max_trial_duration
    configure_training_service(config, platform=ex.platform, gpus=ex.gpus, trials_per_gpu=int(ex.trials_per_gpu),
                               hosts=hosts, manager_ip=ex.manager_ip)
    exp = NasExperiment(NasLungSpace(space=space.to_dict()), evaluator, strategy, config, id=exp_id)
    return exp, strategy, space


def _early_stopping(opts: AssessorOptions, trial: TrialSpec, out: Path) -> EarlyStopping:
    """NNI's assessor on the trials' intermediate results; a stopped trial's record goes to RUN/trials/."""
    from naslung.train.config import TrainConfig

    steps = int(trial.inner_folds) * int(TrainConfig.from_dict(trial.train).epochs)

    def keep_record(stopped: StoppedTrial) -> None:
        path = out / "trials" / f"{int(stopped.seq or 0):05d}_{stopped.trial_id}.json"
        if not path.exists():  # the trial may have finished and written its own record meanwhile
            write_json_atomic(path, stopped.record())

    return EarlyStopping(make_assessor(opts, steps=steps), on_stopped=keep_record)


def run_search(cfg: SearchConfig, data: str | Path, out: str | Path, *, resume: str | None = None,
               printer: Callable[[str], None] = print, debug: bool = False) -> dict[str, Any]:
    """Run (or resume) the search to its trial budget; always stop NNI; write the report."""
    require_nni()
    import requests

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ex = cfg.experiment
    port = free_port() if int(ex.port) == 0 else int(ex.port)
    hosts = load_hosts(ex.hosts) if ex.hosts else None
    ex.trial_concurrency = resolve_concurrency(ex.trial_concurrency, ex.gpus, ex.trials_per_gpu, hosts)
    exp, strategy, space = build_experiment(cfg, data, out, exp_id=resume)
    if ex.platform == "remote" and hosts:
        for rep in preflight(hosts, data, out):
            printer(f"host {rep['host']}: python {rep['python']}, nni {rep['nni']}, torch {rep['torch']}: ready")
    check_port_free(port)
    write_json_atomic(out / "search_config.json", {**cfg.to_dict(), "space": space.to_dict(),
                                                   "data": str(Path(data).resolve()), "experiment_id": exp.id,
                                                   "port": port})
    printer("WARNING: " + SECURITY_WARNING.format(port=port))
    printer(f"experiment {exp.id}: web UI http://localhost:{port}  (logs: {out / 'nni-experiments' / exp.id})")
    printer(f"strategy {cfg.strategy.name}, {ex.max_trials} trials, concurrency {ex.trial_concurrency}, "
            + (f"remote hosts {', '.join(h.address for h in hosts)}" if hosts else
               f"gpus {ex.gpus or 'none (CPU)'}" + (f", {ex.trials_per_gpu} per GPU" if ex.gpus else ""))
            + (f", early stopping {cfg.assessor.name} from step {cfg.assessor.start_step}"
               if cfg.assessor.enabled else ""))
    progress = _Progress(out, ex.max_trials, printer)
    if resume:
        printer(f"resuming {exp.id}: {progress.done_before} trial records already in {out / 'trials'}; NNI "
                f"continues the experiment to the trial budget it was created with")
    t0 = time.time()
    progress.start()
    ok: bool | None = None
    error: RuntimeError | None = None
    previous_handler = _sigterm_as_interrupt()
    try:
        with trial_env(), trial_code_directory(ex.platform, out):
            if resume:
                if not exp.has_checkpoint():
                    raise RuntimeError(f"experiment {resume} is unknown to NNI (see `nnictl experiment list`); "
                                       f"cannot resume it")
                ok = exp.resume(port=port, debug=debug)
            else:
                ok = exp.run(port=port, debug=debug)
    except requests.exceptions.ConnectionError as e:
        error = RuntimeError(f"the NNI manager on port {port} stopped answering ({e.__class__.__name__}); see "
                             f"{out / 'nni-experiments' / exp.id / 'log' / 'nnimanager.log'}; the report below "
                             f"covers the trials that finished")
    finally:
        try:
            with trial_code_directory(ex.platform, out):  # NNI re-checks its code directory while stopping
                exp.stop()
        except Exception as e:  # noqa: BLE001 - stopping a dead manager must not hide the first error
            log.warning("stopping the NNI experiment failed: %s", e)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        progress.stop_event.set()
        progress.join(timeout=5)
        progress.poll()
        printer(f"experiment {exp.id} stopped: NNI's manager and its web UI (port {port}) are gone")
    wall = time.time() - t0
    if ok is None and error is None:  # NNI caught Ctrl-C / SIGTERM, stopped the experiment and returned
        printer(f"search interrupted; continue it with: naslung search ... --resume {exp.id} --out {out}")
    summary = write_report(out, objective=f"val_{cfg.trial.get('objective', 'accuracy')}", top_k=cfg.top_k)
    pruned = getattr(strategy, "pruned", [])
    if pruned:
        import csv

        with open(out / "pruned.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["arch", "reason"])
            w.writeheader()
            w.writerows(pruned)
    new_trials = summary["trials"] - progress.done_before
    summary.update(experiment_id=exp.id, port=port, strategy=cfg.strategy.name, wall_seconds=round(wall, 2),
                   trials_this_run=new_trials,
                   trials_per_hour=round(new_trials / (wall / 3600), 2) if wall > 0 else None,
                   pruned=len(pruned), assessor=cfg.assessor.name,
                   # pop learns from finished trials' metrics: how many reached it (0 = it searched blind)
                   strategy_results_seen=len(strategy.trained) if hasattr(strategy, "trained") else None, interrupted=ok is None and error is None,
                   error=str(error) if error else None)
    write_json_atomic(out / "summary.json", summary)
    if error is not None:
        raise error
    return summary
