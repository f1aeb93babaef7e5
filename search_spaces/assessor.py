"""Early stopping of search trials with NNI's own assessors (Medianstop, Curvefitting).

NNI 3.0's ``NasExperiment`` has no assessor slot: its documentation leaves early stopping to the
strategy. So :class:`EarlyStopping` runs an NNI assessor in the experiment process. It is fed the
intermediate results the execution engine receives (on any training service: local, remote,
Kubernetes) and stops a trial the way NNI's own dispatcher does, with a ``KillTrialJob`` command on
the tuner channel (:func:`search_spaces.nni_api.early_stop_trial`), so the web UI shows it as
``EARLY_STOPPED`` next to its curve.

Every intermediate result a trial reports (:class:`search_spaces.trial._EpochReporter`) carries
its NNI trial id, sequence number, architecture, step and planned steps; that is all this module
needs, so it never touches the trials' files. What a stopped trial would still have cost is
estimated from its own seconds per step (``seconds_saved_est``): the figure behind "GPU-hours
saved" in the search report.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

ASSESSORS = ("Medianstop", "Curvefitting")


@dataclass
class AssessorOptions:
    """The search YAML's ``assessor:`` section (``name: null`` or no section = no early stopping).

    Args:
        name: ``Medianstop`` (stop a trial whose best objective so far is below the median of the
            finished trials' running averages at the same step) or ``Curvefitting`` (stop when the
            extrapolated learning curve falls short of the best finished trial).
        start_step: steps (epochs; with inner folds, epochs of all folds in a row) a trial runs
            before it can be stopped.
        threshold: Curvefitting only: stop when the predicted final value is below
            ``threshold`` times the best finished trial's.
        gap: Curvefitting only: assess every ``gap`` steps.
    """

    name: str | None = None
    start_step: int = 5
    threshold: float = 0.95
    gap: int = 1

    def __post_init__(self) -> None:
        if self.name is not None and self.name not in ASSESSORS:
            raise ValueError(f"assessor.name must be one of {ASSESSORS} or null, got {self.name!r}")
        if int(self.start_step) < 0 or int(self.gap) < 1:
            raise ValueError("assessor.start_step must be >= 0 and assessor.gap >= 1")

    @property
    def enabled(self) -> bool:
        return self.name is not None


def make_assessor(opts: AssessorOptions, *, steps: int, optimize_mode: str = "maximize"):
    """The NNI assessor object ``opts`` names; ``steps`` = the steps a full trial reports."""
    if opts.name == "Medianstop":
        from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor

        return MedianstopAssessor(optimize_mode=optimize_mode, start_step=int(opts.start_step))
    if opts.name == "Curvefitting":
        from nni.algorithms.hpo.curvefitting_assessor import CurvefittingAssessor

        return CurvefittingAssessor(epoch_num=int(steps), start_step=max(int(opts.start_step), 1),
                                    threshold=float(opts.threshold), gap=int(opts.gap))
    raise ValueError(f"no assessor named {opts.name!r}")


@dataclass
class StoppedTrial:
    """What the search report keeps of a trial the assessor stopped."""

    trial_id: str
    seq: int | None
    arch: str | None
    step: int
    steps: int
    objective: float
    seconds_run: float
    history: list[float] = field(default_factory=list)

    @property
    def seconds_saved_est(self) -> float:
        """The steps it did not run, at its own measured seconds per step."""
        if self.step <= 0:
            return 0.0
        return max(self.steps - self.step, 0) * self.seconds_run / self.step

    def record(self) -> dict[str, Any]:
        return {"seq": self.seq, "trial_id": self.trial_id, "status": "EARLY_STOPPED", "arch": self.arch,
                "stopped_at_step": self.step, "steps_planned": self.steps, "epochs_run": self.step,
                "objective_at_stop": self.objective, "objective_history": self.history,
                "train_seconds": round(self.seconds_run, 3),
                "seconds_saved_est": round(self.seconds_saved_est, 3)}


class EarlyStopping:
    """An NNI assessor applied to NAS trials from their intermediate results.

    Args:
        assessor: an NNI ``Assessor`` (see :func:`make_assessor`).
        stop: called with an NNI trial id to stop that trial; default:
            :func:`search_spaces.nni_api.early_stop_trial` on the engine :meth:`attach` was given.
        on_stopped: called with the :class:`StoppedTrial` once a stop was sent (the search writes
            its record to ``RUN/trials/``).

    Thread-safe: NNI's channel thread calls :meth:`on_intermediate` / :meth:`on_end`.
    """

    def __init__(self, assessor: Any, stop: Callable[[str], None] | None = None,
                 on_stopped: Callable[[StoppedTrial], None] | None = None) -> None:
        self.assessor, self.on_stopped = assessor, on_stopped
        self.stop = stop if stop is not None else self._stop_on_engine
        self.engine: Any = None
        self.history: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}
        self.stopped: dict[str, StoppedTrial] = {}
        self._ended: set[str] = set()
        self._model_trial: dict[int, str] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- the rule
    def on_intermediate(self, metric: Mapping[str, Any]) -> bool:
        """Record one intermediate result; stop its trial when the assessor says so. True = stopped now."""
        from nni.assessor import AssessResult

        trial_id = metric.get("trial_id")
        value = metric.get("default")
        if trial_id is None or not isinstance(value, (int, float)):
            log.debug("intermediate result without trial id or value; not assessed: %s", metric)
            return False
        trial_id = str(trial_id)
        with self._lock:
            if trial_id in self.stopped or trial_id in self._ended:
                return False
            hist = self.history.setdefault(trial_id, [])
            hist.append(float(value))
            self.seconds[trial_id] = self.seconds.get(trial_id, 0.0) + float(metric.get("seconds") or 0.0)
            steps = int(metric.get("steps") or len(hist))
            if len(hist) >= steps:  # the last step: the trial ends anyway
                return False
            verdict = self.assessor.assess_trial(trial_id, list(hist))
            if verdict is not AssessResult.Bad and verdict is not False:
                return False
            stopped = StoppedTrial(trial_id=trial_id, seq=metric.get("seq"), arch=metric.get("arch"),
                                   step=len(hist), steps=steps, objective=float(value),
                                   seconds_run=self.seconds[trial_id], history=list(hist))
            self.stopped[trial_id] = stopped
        log.info("early stop: trial %s (%s) at step %d/%d, objective %.4f", trial_id, stopped.arch,
                 stopped.step, stopped.steps, stopped.objective)
        try:
            self.stop(trial_id)
        except Exception as e:  # noqa: BLE001 - a failed stop leaves the trial running, nothing worse
            log.warning("could not stop trial %s: %s", trial_id, e)
            return False
        if self.on_stopped is not None:
            self.on_stopped(stopped)
        return True

    def on_end(self, trial_id: str, success: bool) -> None:
        """A trial ended; a successful one joins the assessor's reference curves."""
        with self._lock:
            if trial_id in self._ended:
                return
            self._ended.add(trial_id)
            if trial_id in self.stopped or trial_id not in self.history:
                return
            try:
                if success:
                    # NNI's assessors record a trial's curve only while assessing it, and Medianstop
                    # skips that before start_step (then trial_end drops the finished curve): assess
                    # the whole curve once more, so every finished trial becomes a reference.
                    self.assessor.assess_trial(trial_id, list(self.history[trial_id]))
                self.assessor.trial_end(trial_id, bool(success))
            except Exception as e:  # noqa: BLE001 - bookkeeping must never kill the search
                log.warning("assessor trial_end(%s) failed: %s", trial_id, e)

    # ---------------------------------------------------------------- NNI engine events
    def attach(self, engine: Any) -> None:
        """Listen to ``engine``'s intermediate-metric and training-end events."""
        from nni.nas.execution.event import ModelEventType

        self.engine = engine
        engine.register_model_event_callback(ModelEventType.IntermediateMetric, self._on_intermediate_event)
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_end_event)

    def _stop_on_engine(self, trial_id: str) -> None:
        from search_spaces.nni_api import early_stop_trial

        if self.engine is None:
            raise RuntimeError("early stopping is not attached to an NNI engine")
        early_stop_trial(self.engine, trial_id)

    def _on_intermediate_event(self, event: Any) -> None:
        metric = getattr(event, "metric", None)
        if isinstance(metric, Mapping):
            if metric.get("trial_id") is not None:
                self._model_trial[id(event.model)] = str(metric["trial_id"])
            self.on_intermediate(metric)

    def _on_end_event(self, event: Any) -> None:
        from nni.nas.space import ModelStatus

        trial_id = self._model_trial.pop(id(event.model), None)
        if trial_id is not None:
            self.on_end(trial_id, getattr(event, "status", None) == ModelStatus.Trained)

    # ---------------------------------------------------------------- report
    def summary(self) -> dict[str, Any]:
        saved = sum(s.seconds_saved_est for s in self.stopped.values())
        return {"early_stopped": len(self.stopped), "seconds_saved_est": round(saved, 1)}
