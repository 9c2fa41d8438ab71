"""MAP + TPE over the same (log-uniform) box as the grid, with the grid's trial count by default."""

from __future__ import annotations

import optuna

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.strategies._base import LEARNING_RATES, WEIGHT_DECAYS, Strategy
from optuna_deelbo.task import TaskSpec

__all__ = ["TPEStrategy"]


class TPEStrategy(Strategy):
    """Optuna's TPE on lr x weight decay, chosen by validation NLL, winner retrained on all N.

    Unlike the grid (the paper's protocol: every configuration trained in full), TPE runs with
    Optuna's default :class:`~optuna.pruners.MedianPruner`, as Optuna users run it.

    Args:
        trials: number of trials; default the grid's 24.
    """

    name = "tpe"
    description = "MAP + TPE + median pruning: lr x weight decay (log-uniform), 80/20 split, val NLL, retrain on all N"

    def __init__(self, trials: int | None = None) -> None:
        if trials is not None and (not isinstance(trials, int) or trials <= 0):
            raise ConfigError(f"TPE trials must be a positive integer, got {trials!r}")
        self._trials = trials or len(LEARNING_RATES) * len(WEIGHT_DECAYS)

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=task.seed)

    def pruner(self) -> optuna.pruners.BasePruner:
        """Optuna's default median pruner on the validation NLL, as an Optuna user would run TPE."""
        return optuna.pruners.MedianPruner()

    def n_trials(self) -> int:
        return self._trials
