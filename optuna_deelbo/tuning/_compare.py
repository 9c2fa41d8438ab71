"""Run several strategies on one task into one storage (the engine behind ``optuna-deelbo compare``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.data._task import TaskSpec
from optuna_deelbo.tuning.strategies import STRATEGY_NAMES, StrategyResult, get_strategy, refuse_existing

__all__ = ["parse_strategies", "run_compare", "study_name_for"]


def parse_strategies(spec: str | Sequence[str]) -> list[str]:
    """``"deelbo,grid"`` or ``["deelbo", "grid"]`` -> checked, de-duplicated names in order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no strategy given; choose from {', '.join(STRATEGY_NAMES)}")
    for name in names:
        if name not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    return list(dict.fromkeys(names))


def study_name_for(task: TaskSpec, strategy: str) -> str:
    """The study name a strategy's search gets: ``<task>/<prior>/<strategy>``."""
    return f"{task.name}/{task.prior}/{strategy}"


def run_compare(
    task: TaskSpec,
    strategies: Sequence[str],
    storage: optuna.storages.BaseStorage,
    *,
    tpe_trials: int | None = None,
    learning_rates: Sequence[float] | None = None,
    show_progress_bar: bool = False,
    if_exists: str = "error",
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> list[StrategyResult]:
    """Run each strategy as its own study in ``storage``; return their results in order.

    ``if_exists``: what to do with a study of the same name (see :meth:`Strategy.create_study`):
    ``"error"`` (default) refuses before anything runs, ``"resume"`` continues, ``"overwrite"`` replaces.
    ``learning_rates``: every strategy's grid (default ``LEARNING_RATES``). ``on_trial(study, trial)``:
    called after every trial finished here (the CLI prints a progress line).
    """
    names = parse_strategies(strategies)
    built = [
        get_strategy(n, tpe_trials=tpe_trials, learning_rates=learning_rates) for n in names
    ]  # fail fast on bad options
    if if_exists == "error":  # refuse before the first strategy trains, not after it
        refuse_existing(storage, [study_name_for(task, s.name) for s in built])
    return [
        strategy.run(
            task,
            storage,
            study_name_for(task, strategy.name),
            show_progress_bar=show_progress_bar,
            if_exists=if_exists,
            on_trial=on_trial,
        )
        for strategy in built
    ]
