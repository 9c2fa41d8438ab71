"""What every strategy shares: the search space, the user objective and the study runner."""

from __future__ import annotations

import json
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_deelbo._errors import ConfigError, StudyExists
from optuna_deelbo.data._task import TaskSpec
from optuna_deelbo.tuning._fit import RetrainResult, fit, retrain
from optuna_deelbo.tuning._trial_queue import (
    PLANNED_ATTR,
    PlannedStudy,
    plan_study,
    queue_progress,
    requeue_interrupted,
    run_queue,
)

__all__ = [
    "IF_EXISTS",
    "LEARNING_RATES",
    "LR_RANGE",
    "PLAN_ATTR",
    "WEIGHT_DECAYS",
    "WEIGHT_DECAY_RANGE",
    "Strategy",
    "StrategyResult",
    "check_learning_rates",
    "refuse_existing",
    "reporting_overhead_s",
    "task_objective",
]

#: The learning-rate grid (4 values), searched by every strategy: half-decade steps over the range
#: where fine-tuning trains within this package's CPU budgets. The paper's {1e-1, 1e-2, 1e-3, 1e-4}
#: (with 6000 steps) left only lr 0.1 training within 300 steps for DE-ELBo on digits and skipped
#: 0.03, the best Split-CIFAR value (README, "Which recipe choices matter").
LEARNING_RATES: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3)
#: The MAP weight-decay grid (6 values). The paper's grid ends in 0; a log-scale
#: distribution cannot hold 0, so 1e-7 (indistinguishable from 0 at these N) stands in.
WEIGHT_DECAYS: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
LR_RANGE: tuple[float, float] = (min(LEARNING_RATES), max(LEARNING_RATES))
WEIGHT_DECAY_RANGE: tuple[float, float] = (min(WEIGHT_DECAYS), max(WEIGHT_DECAYS))


#: What :meth:`Strategy.run` does when the storage already holds a study of that name: refuse
#: (default), continue it if it was planned with the same recipe, or delete and replace it.
IF_EXISTS: tuple[str, ...] = ("error", "resume", "overwrite")
#: Study user attr: the strategy, its planned trial count and :meth:`TaskSpec.signature` (for resuming).
PLAN_ATTR = "plan"


def _study_exists(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


def refuse_existing(storage: optuna.storages.BaseStorage, study_names: Sequence[str]) -> None:
    """Raise :class:`StudyExists` (naming ``--resume`` and ``--overwrite``) if any of ``study_names`` is taken."""
    for name in study_names:
        if _study_exists(storage, name):
            n = len(optuna.load_study(study_name=name, storage=storage).trials)
            raise StudyExists(
                f"study {name!r} already exists in this storage ({n} trials); nothing was changed. "
                "--resume (if_exists='resume') continues it, --overwrite (if_exists='overwrite') replaces it"
            )


def _differences(stored: Any, current: Any, path: str = "") -> list[str]:
    """``"key: stored -> now"`` for every leaf where two JSON-like values differ."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key), current.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if stored == current else [f"{path}: {stored!r} -> {current!r}"]


def _trial_seconds(trials: Sequence[FrozenTrial]) -> float:
    """Wall-clock the finished trials took (s), from their start and completion times."""
    total = 0.0
    for t in trials:
        if t.datetime_start is not None and t.datetime_complete is not None:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def check_learning_rates(values: Sequence[float]) -> tuple[float, ...]:
    """A learning-rate grid: distinct positive finite numbers, in the given order."""
    try:
        lrs = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"learning rates must be numbers, got {values!r}") from None
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError(f"learning rates must be distinct positive finite numbers (at least one), got {values!r}")
    return lrs


def task_objective(task: TaskSpec, lr_range: tuple[float, float] = LR_RANGE) -> Callable[[optuna.trial.Trial], float]:
    """The one user objective every strategy optimises (what a user would write)."""

    def objective(trial: optuna.trial.Trial) -> float:
        lr = trial.suggest_float("lr", *lr_range, log=lr_range[0] < lr_range[1])
        weight_decay = trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
        return fit(trial, task, lr=lr, weight_decay=weight_decay)

    return objective


@dataclass
class StrategyResult:
    """One strategy's outcome on one task.

    Attributes:
        tuning_s: wall-clock of the whole search (s); retrain_s: retraining the winner on all N.
        total_s: ``tuning_s + retrain_s``.
        test_accuracy, test_nll: of the final model (NaN without a test set).
    """

    strategy: str
    study_name: str
    n_trials: int
    tuning_s: float
    retrain_s: float
    total_s: float
    test_accuracy: float
    test_nll: float
    best_params: dict[str, Any]
    learned: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_study(cls, study: optuna.Study) -> StrategyResult:
        """The result :meth:`Strategy.run` returned, rebuilt from a finished study's user attrs.

        Raises:
            ConfigError: the study was not written by a finished strategy run.
        """
        attrs = study.user_attrs
        missing = [k for k in ("strategy", "time:total_s", "test:accuracy") if k not in attrs]
        if missing:
            raise ConfigError(
                f"study {study.study_name!r} is not a finished strategy run (missing {', '.join(missing)})"
            )
        trials = study.get_trials(deepcopy=False)
        best = next((t for t in trials if t.number == attrs.get("best_trial")), None)
        learned = {} if best is None else _learned_floats(best)
        return cls(
            strategy=str(attrs["strategy"]),
            study_name=study.study_name,
            n_trials=queue_progress(study).finished if PLANNED_ATTR in attrs else len(trials),
            tuning_s=float(attrs.get("time:tuning_s", math.nan)),
            retrain_s=float(attrs.get("time:retrain_s", math.nan)),
            total_s=float(attrs["time:total_s"]),
            test_accuracy=float(attrs["test:accuracy"]),
            test_nll=float(attrs.get("test:nll", math.nan)),
            best_params=dict(attrs.get("best_params") or {}),
            learned=learned,
        )


def _learned_floats(trial: FrozenTrial) -> dict[str, float]:
    """A trial's ``learned:*`` user attrs that are numbers (not traces or per-layer dicts)."""
    return {k: v for k, v in trial.user_attrs.items() if k.startswith("learned:") and isinstance(v, float)}


def reporting_overhead_s(trials: Sequence[FrozenTrial], best: FrozenTrial) -> float:
    """Seconds the trials spent evaluating the test set for reporting, except the chosen one's.

    A strategy that needs no retraining pays for one test evaluation (its chosen model's), as
    the retrained winner's is counted for the others; the rest is reporting, not tuning cost.
    """
    total = sum(float(t.user_attrs.get("time:test_eval_s", 0.0)) for t in trials)
    return total - float(best.user_attrs.get("time:test_eval_s", 0.0))


class Strategy(ABC):
    """A way to choose hyperparameters: it builds a sampler and plans its trials; the runner does the rest.

    A study is created with every planned trial enqueued (:meth:`create_study`), worked off by
    one process (:meth:`run`) or by many (``optuna-deelbo worker``), then :meth:`finish` picks
    the winner, retrains it if needed and writes the study's user attrs.

    Args:
        learning_rates: the learning-rate grid (grid strategies search it, TPE the range it spans);
            default :data:`LEARNING_RATES`.
    """

    name: str
    description: str
    metric_name: str = "val_nll"
    retrain_winner: bool = True

    def __init__(self, learning_rates: Sequence[float] | None = None) -> None:
        self.learning_rates = check_learning_rates(learning_rates) if learning_rates is not None else LEARNING_RATES

    @property
    def lr_range(self) -> tuple[float, float]:
        """``(low, high)`` of the learning-rate grid: the objective's ``suggest_float("lr", ...)`` range."""
        return min(self.learning_rates), max(self.learning_rates)

    def pruner(self) -> optuna.pruners.BasePruner:
        """The study's pruner; by default none (every configuration trains to the end)."""
        return optuna.pruners.NopPruner()

    @abstractmethod
    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        """The study's sampler."""

    @abstractmethod
    def n_trials(self) -> int:
        """How many trials the search runs."""

    def planned_params(self, task: TaskSpec) -> list[dict[str, Any]]:
        """The trials enqueued at creation: fixed parameters per trial; ``{}`` lets the sampler choose.

        By default :meth:`n_trials` free slots (TPE fills each when a worker takes it); grid
        strategies list their grid points.
        """
        return [{} for _ in range(self.n_trials())]

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        """The study's objective; by default the user objective of :func:`task_objective`."""
        return task_objective(task, self.lr_range)

    def retrain_best(self, task: TaskSpec, best: FrozenTrial) -> RetrainResult:
        """Retrain the chosen configuration on all ``N`` (only if :attr:`retrain_winner`)."""
        return retrain(task, best.params["lr"], best.params["weight_decay"])

    def plan_signature(self, task: TaskSpec) -> dict[str, Any]:
        """What a study must have been planned with to be resumed (stored as the :data:`PLAN_ATTR` user attr)."""
        signature = {"strategy": self.name, "trials": len(self.planned_params(task)), "task": task.signature()}
        if self.learning_rates != LEARNING_RATES:  # (studies planned with the default grid keep their signature)
            signature["learning_rates"] = list(self.learning_rates)
        return json.loads(json.dumps(signature))  # the form it has after a round trip through the storage

    def create_study(
        self,
        task: TaskSpec,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        *,
        attrs: Mapping[str, Any] | None = None,
        if_exists: str = "error",
    ) -> optuna.Study:
        """Create the study with every planned trial enqueued.

        Args:
            attrs: extra study user attrs (e.g. the recipe a worker rebuilds the task from).
            if_exists: a study of that name already in ``storage``: ``"error"`` refuses
                (:class:`StudyExists`, nothing touched), ``"resume"`` returns it ready to continue
                (:meth:`resume_study`), ``"overwrite"`` deletes it and creates a new one.
        """
        if if_exists not in IF_EXISTS:
            raise ConfigError(f"unknown if_exists {if_exists!r}; choose one of {IF_EXISTS}")
        if _study_exists(storage, study_name):
            if if_exists == "resume":
                # A study planned for workers (attrs: its recipe) may have live RUNNING trials; heartbeats
                # retry the dead ones. A study one process runs has no one else: its RUNNING trials are dead.
                return self.resume_study(task, storage, study_name, fail_running=attrs is None)
            if if_exists == "error":
                refuse_existing(storage, [study_name])
            optuna.delete_study(study_name=study_name, storage=storage)
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction="minimize",
            sampler=self.sampler(task),
            pruner=self.pruner(),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([self.metric_name])
        study.set_user_attr("strategy", self.name)
        study.set_user_attr("description", self.description)
        study.set_user_attr("task", {"name": task.name, "N": task.n_train, "prior": task.prior, "steps": task.steps})
        study.set_user_attr(PLAN_ATTR, self.plan_signature(task))
        for key, value in (attrs or {}).items():
            study.set_user_attr(key, value)
        plan_study(study, self.planned_params(task))
        return study

    def resume_study(
        self, task: TaskSpec, storage: optuna.storages.BaseStorage, study_name: str, *, fail_running: bool = True
    ) -> optuna.Study:
        """The existing study ``study_name``, its interrupted trials queued again (:func:`requeue_interrupted`).

        ``fail_running``: mark RUNNING trials failed first (no other process works on the study).

        Raises:
            StudyExists: it was not planned by this package, or with another strategy, task or budget
                (the differences are named).
        """
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=self.sampler(task), pruner=self.pruner()
        )
        stored = study.user_attrs.get(PLAN_ATTR)
        if stored is None:
            raise StudyExists(
                f"study {study_name!r} was not planned by optuna-deelbo (no {PLAN_ATTR!r} user attr), so it cannot "
                "be resumed; --overwrite replaces it, or use another --storage"
            )
        changed = _differences(stored, self.plan_signature(task))
        if changed:
            raise StudyExists(
                f"study {study_name!r} was planned with another recipe ({'; '.join(changed[:4])}); resume it with "
                "the settings it was planned with, --overwrite replaces it, or use another --storage"
            )
        requeue_interrupted(study, fail_running=fail_running)
        return study

    def run(
        self,
        task: TaskSpec,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        *,
        show_progress_bar: bool = False,
        if_exists: str = "error",
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> StrategyResult:
        """Run the search in this process as its own study in ``storage``.

        ``if_exists`` as in :meth:`create_study`; ``on_trial(study, trial)`` after every finished trial.
        A resumed study runs only what is missing:
        a finished one returns its stored result without training; otherwise the interrupted
        trials run again and the tuning wall-clock adds the trials finished before the interruption.
        """
        study = self.create_study(task, storage, study_name, if_exists=if_exists)
        done_before = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        if done_before and "time:total_s" in study.user_attrs and queue_progress(study).done:
            return StrategyResult.from_study(study)
        start = time.perf_counter()
        run_queue(
            [(PlannedStudy.of(study), self.objective(task))], show_progress_bar=show_progress_bar, on_trial=on_trial
        )
        return self.finish(task, study, _trial_seconds(done_before) + time.perf_counter() - start)

    def finish(self, task: TaskSpec, study: optuna.Study, tuning_s: float) -> StrategyResult:
        """Pick the winner of a worked-off study, retrain it if needed, write the study's user attrs.

        Args:
            tuning_s: wall-clock of the search (s), measured by whoever ran it.
        """
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise RuntimeError(f"strategy {self.name!r}: every trial failed or was pruned; see the study's user attrs")
        best = min(complete, key=lambda t: float(t.value if t.value is not None else "inf"))
        learned = _learned_floats(best)
        if self.retrain_winner:
            outcome = self.retrain_best(task, best)
            retrain_s = outcome.seconds
            accuracy = outcome.test.accuracy if outcome.test else float("nan")
            nll = outcome.test.nll if outcome.test else float("nan")
        else:
            tuning_s -= reporting_overhead_s(study.trials, best)
            retrain_s = 0.0
            accuracy = float(best.user_attrs.get("test:accuracy", float("nan")))
            nll = float(best.user_attrs.get("test:nll", float("nan")))
        result = StrategyResult(
            strategy=self.name,
            study_name=study.study_name,
            n_trials=queue_progress(study).finished,
            tuning_s=tuning_s,
            retrain_s=retrain_s,
            total_s=tuning_s + retrain_s,
            test_accuracy=accuracy,
            test_nll=nll,
            best_params={k: v for k, v in best.params.items() if k not in getattr(study.sampler, "learned", ())},
            learned=learned,
        )
        for key, value in {
            "time:tuning_s": result.tuning_s,
            "time:retrain_s": result.retrain_s,
            "time:total_s": result.total_s,
            "test:accuracy": result.test_accuracy,
            "test:nll": result.test_nll,
            "best_trial": best.number,
            "best_params": result.best_params,
        }.items():
            study.set_user_attr(key, value)
        return result
