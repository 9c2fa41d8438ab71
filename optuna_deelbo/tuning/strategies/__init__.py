"""Strategies: what each search runs (sampler, planned trials, objective) on a shared TaskSpec."""

from __future__ import annotations

from collections.abc import Sequence

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import shown
from optuna_deelbo.tuning.strategies._base import (
    LEARNING_RATES,
    LR_RANGE,
    WEIGHT_DECAY_RANGE,
    WEIGHT_DECAYS,
    Strategy,
    check_learning_rates,
    suggest_hyperparameters,
    task_objective,
)
from optuna_deelbo.tuning.strategies.deelbo import BATCHED_MODES, DEELBoStrategy
from optuna_deelbo.tuning.strategies.deelbo_lr_free import LRFreeDEELBoStrategy
from optuna_deelbo.tuning.strategies.default import DefaultStrategy, LRFreeStrategy
from optuna_deelbo.tuning.strategies.descend import DescendingDEELBoStrategy
from optuna_deelbo.tuning.strategies.grid import GridStrategy
from optuna_deelbo.tuning.strategies.halving import HalvingDEELBoStrategy
from optuna_deelbo.tuning.strategies.schedules import AdaptiveStrategy, PullDownStrategy, PullUpStrategy
from optuna_deelbo.tuning.strategies.tpe import SEARCHED_REGULARIZERS, TPERegStrategy, TPEStrategy
from optuna_deelbo.tuning.strategies.tpe_budget import TPEBudgetStrategy

__all__ = [
    "BATCHED_MODES",
    "DEFAULT_STRATEGIES",
    "LEARNING_RATES",
    "LR_RANGE",
    "SEARCHED_REGULARIZERS",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "WEIGHT_DECAYS",
    "WEIGHT_DECAY_RANGE",
    "AdaptiveStrategy",
    "DEELBoStrategy",
    "DefaultStrategy",
    "DescendingDEELBoStrategy",
    "GridStrategy",
    "HalvingDEELBoStrategy",
    "LRFreeDEELBoStrategy",
    "LRFreeStrategy",
    "PullDownStrategy",
    "PullUpStrategy",
    "Strategy",
    "TPEBudgetStrategy",
    "TPERegStrategy",
    "TPEStrategy",
    "check_learning_rates",
    "get_strategy",
    "suggest_hyperparameters",
    "task_objective",
]

#: Every strategy by its name (``optuna-deelbo compare --strategies``), in the order ``--help`` lists them.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        DEELBoStrategy,
        DescendingDEELBoStrategy,
        HalvingDEELBoStrategy,
        LRFreeDEELBoStrategy,
        GridStrategy,
        TPEStrategy,
        TPERegStrategy,
        TPEBudgetStrategy,
        DefaultStrategy,
        LRFreeStrategy,
        PullDownStrategy,
        PullUpStrategy,
        AdaptiveStrategy,
    )
}
#: Strategy names accepted by :func:`get_strategy` and ``optuna-deelbo compare --strategies``.
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
#: What ``optuna-deelbo compare`` runs when ``--strategies`` is not given.
DEFAULT_STRATEGIES: tuple[str, ...] = ("deelbo", "grid", "tpe", "tpe-budget", "default")


def get_strategy(
    name: str,
    *,
    tpe_trials: int | None = None,
    learning_rates: Sequence[float] | None = None,
    batched: str = "auto",
) -> Strategy:
    """The strategy called ``name`` (learning-rate grid ``learning_rates``, default :data:`LEARNING_RATES`).

    ``batched``: the DE-ELBo strategy's :data:`BATCHED_MODES` (``deelbo-halving`` is always batched and
    refuses ``"off"``; the other strategies ignore it). ``deelbo-lr-free`` and the no-search baselines
    ``default`` / ``lr-free`` have no grid (``deelbo-lr-free`` refuses one).

    Raises:
        ConfigError: an unknown name, a bad grid or batched mode.
    """
    if batched not in BATCHED_MODES:
        raise ConfigError(f"unknown batched mode {batched!r}; choose one of {BATCHED_MODES}")
    if isinstance(name, str) and name in STRATEGIES:
        return STRATEGIES[name].from_options(learning_rates=learning_rates, tpe_trials=tpe_trials, batched=batched)
    raise ConfigError(f"unknown strategy {shown(name)}; choose from {', '.join(STRATEGY_NAMES)}")
