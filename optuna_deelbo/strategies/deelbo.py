"""DE-ELBo: grid over 4 learning rates; weight decay learned in-loop; pick by training loss."""

from __future__ import annotations

from typing import Any

import optuna

from optuna_deelbo.sampler import DEELBoSampler
from optuna_deelbo.strategies._base import LEARNING_RATES, Strategy
from optuna_deelbo.task import TaskSpec

__all__ = ["DEELBoStrategy"]


class DEELBoStrategy(Strategy):
    """Four DE-ELBo runs on all N; the lowest final training DE-ELBo loss wins (no validation set)."""

    name = "deelbo"
    description = "DE-ELBo: lr grid (4), weight decay learned in-loop, chosen by final training loss"
    metric_name = "train_deelbo_loss"
    retrain_winner = False

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        grid = optuna.samplers.GridSampler({"lr": list(LEARNING_RATES)}, seed=task.seed)
        return DEELBoSampler(grid, learned=("weight_decay",))

    def n_trials(self) -> int:
        return len(LEARNING_RATES)

    def planned_params(self, task: TaskSpec) -> list[dict[str, Any]]:
        return [{"lr": lr} for lr in LEARNING_RATES]
