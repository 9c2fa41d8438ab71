"""Regularization schedules as strategies (Lu et al. 2017): pull-down, pull-up and the feedback rule.

Each searches the 4 learning rates (like ``deelbo``); the weight decay follows a schedule
instead of being searched or learned. Choice by validation NLL on the 80/20 split, then the
winner is retrained on all N with the same schedule (the adaptive rule replays the trajectory
it produced during tuning, since there is no validation set left to drive it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import StorageError
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule, pull_down, pull_up
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._fit import RetrainResult, fit, retrain
from optuna_deelbo.tuning.strategies._base import WEIGHT_DECAYS, Strategy

__all__ = ["AdaptiveStrategy", "PullDownStrategy", "PullUpStrategy"]

#: Steps between two updates of the feedback rule, as a fraction of the run (at least 1 step).
ADAPTIVE_UPDATES = 10


def _first_value(schedule: StepSchedule | AdaptiveFeedback) -> float:
    """The weight decay a schedule uses at step 1 (the objective's starting value)."""
    return schedule.value_at(1) if isinstance(schedule, StepSchedule) else schedule.value


class _ScheduledStrategy(Strategy):
    """Grid over the learning rates; MAP with a weight-decay schedule built per task."""

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GridSampler({"lr": list(self.learning_rates)}, seed=task.seed)

    def n_trials(self) -> int:
        return len(self.learning_rates)

    def planned_params(self, task: TaskSpec) -> list[dict[str, Any]]:
        return [{"lr": lr} for lr in self.learning_rates]

    def schedule(self, task: TaskSpec) -> StepSchedule | AdaptiveFeedback:  # pragma: no cover - abstract
        raise NotImplementedError

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        def objective(trial: optuna.trial.Trial) -> float:
            lr = trial.suggest_float("lr", *self.lr_range, log=self.lr_range[0] < self.lr_range[1])
            schedule = self.schedule(task)
            return fit(trial, task, lr=lr, weight_decay=_first_value(schedule), schedule=schedule)

        return objective

    def retrain_best(self, task: TaskSpec, best: FrozenTrial) -> RetrainResult:
        schedule = self.schedule(task)
        return retrain(task, best.params["lr"], _first_value(schedule), schedule=schedule)


class PullDownStrategy(_ScheduledStrategy):
    """Weight decay stepped down the grid's values (strong first), equal steps per value."""

    name = "pulldown"
    description = "MAP + pull-down weight decay (1e-2 -> 1e-7 in equal steps), lr grid (4), val NLL, retrain"

    def schedule(self, task: TaskSpec) -> StepSchedule:
        return pull_down(WEIGHT_DECAYS, max(1, task.steps // len(WEIGHT_DECAYS)))


class PullUpStrategy(_ScheduledStrategy):
    """Weight decay stepped up the grid's values (weak first), equal steps per value."""

    name = "pullup"
    description = "MAP + pull-up weight decay (1e-7 -> 1e-2 in equal steps), lr grid (4), val NLL, retrain"

    def schedule(self, task: TaskSpec) -> StepSchedule:
        return pull_up(WEIGHT_DECAYS, max(1, task.steps // len(WEIGHT_DECAYS)))


class AdaptiveStrategy(_ScheduledStrategy):
    """The feedback rule: raise weight decay while train accuracy runs ahead of validation accuracy."""

    name = "adaptive"
    description = "MAP + adaptive weight decay (x2 when train acc > val acc + 5 pts, /2 when within 1), lr grid (4)"

    def schedule(self, task: TaskSpec) -> AdaptiveFeedback:
        return AdaptiveFeedback(1e-4, every=max(1, task.steps // ADAPTIVE_UPDATES))

    def retrain_best(self, task: TaskSpec, best: FrozenTrial) -> RetrainResult:
        trajectory = A.series(best, A.LAMBDA_TRAJECTORY)
        if trajectory is None:
            raise StorageError(
                f"trial {best.number} has no {A.LAMBDA_TRAJECTORY!r} (the schedule it trained with), so the feedback "
                "rule's winner cannot be retrained; rerun the study with if_exists='restart'"
            )
        every = max(1, task.steps // ADAPTIVE_UPDATES)
        replay = replay_schedule(trajectory, every)
        return retrain(task, best.params["lr"], _first_value(replay), schedule=replay)


def replay_schedule(trajectory: list[list[float]], every: int) -> StepSchedule:
    """The piecewise-constant schedule that reproduces an adaptive run's ``[[start_step, wd], ...]``."""
    values = []
    for (start, value), nxt in zip(trajectory, [*trajectory[1:], None], strict=True):
        length = (int(nxt[0]) - int(start)) if nxt is not None else every
        values += [value] * max(1, length // every)
    return StepSchedule(tuple(values), every)
