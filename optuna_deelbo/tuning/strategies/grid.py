"""MAP + grid search: 4 learning rates x 6 weight decays on an 80/20 split, retrain the winner."""

from __future__ import annotations

import itertools
from typing import Any

import optuna

from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning.strategies._base import WEIGHT_DECAYS, Strategy

__all__ = ["GridStrategy"]


class GridStrategy(Strategy):
    """The paper's baseline: every (lr, weight decay) pair, chosen by validation NLL."""

    name = "grid"
    description = "MAP + grid search: lr (4) x weight decay (6), 80/20 split, val NLL, retrain on all N"

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GridSampler(
            {"lr": list(self.learning_rates), "weight_decay": list(WEIGHT_DECAYS)}, seed=task.seed
        )

    def n_trials(self) -> int:
        return len(self.learning_rates) * len(WEIGHT_DECAYS)

    def planned_params(self, task: TaskSpec) -> list[dict[str, Any]]:
        return [{"lr": lr, "weight_decay": wd} for lr, wd in itertools.product(self.learning_rates, WEIGHT_DECAYS)]
