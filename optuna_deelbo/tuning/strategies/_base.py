"""What every strategy shares: the learning-rate and weight-decay grids, the user objective, the Strategy base.

A strategy says what to search; the study lifecycle in :mod:`optuna_deelbo.tuning` runs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import optuna
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import learning_rate
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._fit import RetrainResult, fit, retrain
from optuna_deelbo.tuning._trial_queue import PlannedStudy, run_queue

__all__ = [
    "LEARNING_RATES",
    "LR_RANGE",
    "WEIGHT_DECAYS",
    "WEIGHT_DECAY_RANGE",
    "Strategy",
    "check_learning_rates",
    "skip_trial",
    "suggest_hyperparameters",
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


def check_learning_rates(values: Sequence[float]) -> tuple[float, ...]:
    """A learning-rate grid: distinct finite numbers in ``(0, MAX_LEARNING_RATE]``, in the given order."""
    try:
        items = () if isinstance(values, (str, bytes)) else tuple(values)
    except TypeError:
        items = ()
    if not items:
        raise ConfigError(f"learning rates must be a non-empty sequence of numbers, got {values!r}")
    lrs = tuple(learning_rate(v, "every learning rate") for v in items)
    if len(set(lrs)) != len(lrs):
        raise ConfigError(f"learning rates must be distinct, got {values!r}")
    return lrs


def skip_trial(trial: optuna.trial.Trial, reason: str) -> NoReturn:
    """End ``trial`` PRUNED without training it: the strategy's own decision, said in ``failure:reason``.

    The trial gets the ``skipped`` user attr, so it is not counted as a run of the search
    (:attr:`~optuna_deelbo.tuning.QueueProgress.trained`).
    """
    trial.set_user_attr(A.FAILURE_REASON, reason)
    trial.set_user_attr(A.SKIPPED, True)
    raise optuna.TrialPruned(reason)


def suggest_hyperparameters(trial: optuna.trial.Trial, lr_range: tuple[float, float] = LR_RANGE) -> tuple[float, float]:
    """``(lr, weight_decay)`` as the user objective suggests them (a placeholder weight decay under DEELBoSampler)."""
    lr = trial.suggest_float("lr", *lr_range, log=lr_range[0] < lr_range[1])
    weight_decay = trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
    return lr, weight_decay


def task_objective(task: TaskSpec, lr_range: tuple[float, float] = LR_RANGE) -> Callable[[optuna.trial.Trial], float]:
    """The one user objective every strategy optimises (what a user would write)."""

    def objective(trial: optuna.trial.Trial) -> float:
        lr, weight_decay = suggest_hyperparameters(trial, lr_range)
        return fit(trial, task, lr=lr, weight_decay=weight_decay)

    return objective


class Strategy(ABC):
    """A way to choose hyperparameters: its sampler, pruner, planned trials, objective and how to retrain.

    The study lifecycle (:func:`~optuna_deelbo.tuning.run_strategy`, or
    :mod:`~optuna_deelbo.tuning.workers` for many processes) does the rest: it creates the study with every
    planned trial enqueued, works the queue off, then picks the winner, retrains it if
    :attr:`retrain_winner` and writes the study's user attrs.

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

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        """The strategy from ``compare``'s shared options (what :func:`get_strategy` passes every class).

        Args:
            learning_rates: the learning-rate grid (``None``: :data:`LEARNING_RATES`).
            tpe_trials: the TPE strategies' trial count (the others ignore it).
            batched: the DE-ELBo strategies' batched mode (the others ignore it).
        """
        return cls(learning_rates)

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

    def work_off(
        self,
        study: PlannedStudy,
        task: TaskSpec,
        *,
        show_progress_bar: bool = False,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> int:
        """Run ``study``'s waiting trials in this process; returns how many ran.

        By default one after another through Optuna's ``optimize`` (the planned-trial queue's ``run_queue``).
        """
        return run_queue([(study, self.objective(task))], show_progress_bar=show_progress_bar, on_trial=on_trial)

    def retrain_best(self, task: TaskSpec, best: FrozenTrial) -> RetrainResult:
        """Retrain the chosen configuration on all ``N`` (only if :attr:`retrain_winner`)."""
        return retrain(task, best.params["lr"], best.params["weight_decay"])

    def plan_signature(self, task: TaskSpec) -> dict[str, Any]:
        """What a study must have been planned with to be resumed (the study attr ``plan``, JSON values)."""
        signature = {"strategy": self.name, "trials": len(self.planned_params(task)), "task": task.signature()}
        if self.learning_rates != LEARNING_RATES:  # (studies planned with the default grid keep their signature)
            signature["learning_rates"] = list(self.learning_rates)
        return signature
