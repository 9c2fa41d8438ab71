"""DE-ELBo: grid over 4 learning rates; weight decay learned in-loop; pick by the recipe's selection rule."""

from __future__ import annotations

from typing import Any

import optuna

from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning._sampler import DEELBoSampler
from optuna_deelbo.tuning.strategies._base import Strategy

__all__ = ["DEELBoStrategy"]


class DEELBoStrategy(Strategy):
    """Four DE-ELBo runs on all N; the lowest score of the DE-ELBo recipe's selection rule wins (no validation set).

    The trial value is that score (``select:<rule>`` user attr; ``train-loss`` by default: the
    final training DE-ELBo loss), see :data:`optuna_deelbo.SELECTION_RULES`.
    """

    name = "deelbo"
    description = "DE-ELBo: lr grid (4), weight decay learned in-loop, chosen by the selection rule (no validation set)"
    metric_name = "selection_score"
    retrain_winner = False

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        grid = optuna.samplers.GridSampler({"lr": list(self.learning_rates)}, seed=task.seed)
        return DEELBoSampler(grid, learned=("weight_decay",))

    def n_trials(self) -> int:
        return len(self.learning_rates)

    def planned_params(self, task: TaskSpec) -> list[dict[str, Any]]:
        return [{"lr": lr} for lr in self.learning_rates]
