"""Strategies: each builds one Optuna study from a shared :class:`~optuna_deelbo.task.TaskSpec`."""

from __future__ import annotations

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.strategies._base import (
    LEARNING_RATES,
    LR_RANGE,
    WEIGHT_DECAY_RANGE,
    WEIGHT_DECAYS,
    Strategy,
    StrategyResult,
    task_objective,
)
from optuna_deelbo.strategies.deelbo import DEELBoStrategy
from optuna_deelbo.strategies.grid import GridStrategy
from optuna_deelbo.strategies.tpe import TPEStrategy

__all__ = [
    "LEARNING_RATES",
    "LR_RANGE",
    "STRATEGY_NAMES",
    "WEIGHT_DECAYS",
    "WEIGHT_DECAY_RANGE",
    "DEELBoStrategy",
    "GridStrategy",
    "Strategy",
    "StrategyResult",
    "TPEStrategy",
    "get_strategy",
    "task_objective",
]

#: Strategy names accepted by :func:`get_strategy` and ``optuna-deelbo compare --strategies``.
STRATEGY_NAMES: tuple[str, ...] = ("deelbo", "grid", "tpe")


def get_strategy(name: str, *, tpe_trials: int | None = None) -> Strategy:
    """The strategy called ``name``; raises :class:`ConfigError` for an unknown one."""
    if name == "deelbo":
        return DEELBoStrategy()
    if name == "grid":
        return GridStrategy()
    if name == "tpe":
        return TPEStrategy(tpe_trials)
    raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
