"""``DEELBoSampler``: take regularisation hyperparameters out of an Optuna search.

Modelled on :class:`optuna.samplers.PartialFixedSampler`: a wrapper that forwards everything
to a base sampler except the *learned* parameters, which the base sampler never sees.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, GridSampler

from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo.bayes._deelbo import DEELBo
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._optuna_internals import grid_search_space

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import BaseTrial, FrozenTrial, TrialState

__all__ = ["DEELBoSampler", "PlaceholderWarning", "learned_names", "report_learned", "without_learned"]


def _placeholder(param_name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        return distribution.low
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    raise ConfigError(f"learned parameter {param_name!r} has an unsupported distribution {distribution}")


class DEELBoSampler(BaseSampler):
    """Sampler that learns some hyperparameters in the training loop instead of searching them.

    The user's objective stays as it is: it still calls ``trial.suggest_float("weight_decay",
    ...)``. For every name in ``learned`` this sampler answers with a fixed placeholder (the
    distribution's lower bound, or its first choice) without asking the base sampler, and
    :func:`optuna_deelbo.fit` sees that the trial runs under a ``DEELBoSampler`` and learns
    the value with the DE-ELBo instead (an own loop: ``od.report_learned(trial, reg)``). The
    learned value lands on the trial as the user attr ``learned:<name>``;
    ``trial.params[<name>]`` and so ``study.best_params`` (and optuna-dashboard's params
    column) hold only the placeholder: read :func:`~optuna_deelbo.best_params` / :func:`~optuna_deelbo.learned_params`.

    Example:
        .. code-block:: python

            sampler = DEELBoSampler(optuna.samplers.GridSampler({"lr": [1e-1, 3e-2, 1e-2, 3e-3]}))
            study = optuna.create_study(sampler=sampler)
            study.optimize(objective, n_trials=4)

    Args:
        base_sampler: samples every other parameter (``GridSampler``, ``TPESampler``, ...).
        learned: names of the parameters learned in-loop.
    """

    def __init__(self, base_sampler: BaseSampler, learned: Sequence[str] = ("weight_decay",)) -> None:
        if not isinstance(base_sampler, BaseSampler):
            raise ConfigError(f"base_sampler must be an optuna sampler, got {type(base_sampler).__name__}")
        if isinstance(learned, str):
            learned = (learned,)
        names = tuple(learned) if isinstance(learned, (list, tuple, set, frozenset)) else ()
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"learned must be a non-empty sequence of parameter names, got {learned!r}")
        if isinstance(base_sampler, GridSampler):
            grid = grid_search_space(base_sampler)
            empty = sorted(name for name, values in grid.items() if len(values) == 0)
            if empty:
                raise ConfigError(f"the base GridSampler's grid has no values for {empty}; list at least one each")
            # A grid that still lists a learned name would repeat every other point once per value.
            in_grid = sorted(set(names) & set(grid))
            if in_grid:
                raise ConfigError(
                    f"the base GridSampler's grid lists learned parameter(s) {in_grid}; "
                    "drop them, e.g. GridSampler(without_learned(grid, learned))"
                )
        self._base_sampler = base_sampler
        self._learned = frozenset(names)

    @property
    def learned(self) -> frozenset[str]:
        """The parameter names learned in-loop, never proposed by the base sampler."""
        return self._learned

    @property
    def base_sampler(self) -> BaseSampler:
        """The wrapped sampler."""
        return self._base_sampler

    def reseed_rng(self) -> None:
        self._base_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        search_space = self._base_sampler.infer_relative_search_space(study, trial)
        return {name: dist for name, dist in search_space.items() if name not in self._learned}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        search_space = {name: dist for name, dist in search_space.items() if name not in self._learned}
        return self._base_sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name in self._learned:
            return _placeholder(param_name, param_distribution)
        return self._base_sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base_sampler.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        _warn_if_placeholder_only(trial, state, self._learned)
        self._base_sampler.after_trial(study, trial, state, values)


class PlaceholderWarning(UserWarning):
    """A trial under :class:`DEELBoSampler` finished without recording learned values.

    Its objective trained with the placeholder (the distribution's lower bound) instead of
    learning the value: plain MAP with the smallest weight decay, which nothing else reports.
    """


def _warn_if_placeholder_only(trial: FrozenTrial, state: TrialState, learned: frozenset[str]) -> None:
    """Warn (:class:`PlaceholderWarning`): a COMPLETE trial asked for a learned name, recorded no ``learned:`` attr."""
    from optuna.trial import TrialState

    if state != TrialState.COMPLETE:
        return
    asked = sorted(learned & set(trial.params))
    if not asked or any(key.startswith(A.LEARNED_PREFIX) for key in trial.user_attrs):
        return
    placeholders = ", ".join(f"{name}={trial.params[name]!r}" for name in asked)
    warnings.warn(
        f"trial {trial.number} ran under DEELBoSampler but recorded no learned values: its objective "
        f"trained with the placeholder {placeholders} (plain MAP). Train through "
        "od.fit(trial, task, ...) or call od.report_learned(trial, reg) before returning.",
        PlaceholderWarning,
        stacklevel=2,
    )


def learned_names(trial: BaseTrial) -> frozenset[str]:
    """Names learned in-loop for ``trial``: its study's :class:`DEELBoSampler`'s, else empty.

    ``FixedTrial`` and trials of studies with any other sampler learn nothing (plain MAP).
    """
    study = getattr(trial, "study", None)
    sampler = getattr(study, "sampler", None)
    return sampler.learned if isinstance(sampler, DEELBoSampler) else frozenset()


def without_learned(search_space: dict[str, Iterable[Any]], learned: Iterable[str]) -> dict[str, list[Any]]:
    """A grid search space with the learned names removed (for ``GridSampler`` under the wrapper)."""
    drop = set(learned)
    return {name: list(values) for name, values in search_space.items() if name not in drop}


def report_learned(trial: BaseTrial, reg: DEELBo) -> dict[str, Any]:
    """Write what ``reg`` learned on ``trial`` (``learned:lambda``, ``learned:weight_decay``, ...); returns the attrs.

    Under :class:`DEELBoSampler` this is what tells the study that the trial learned its
    ``weight_decay`` instead of training with the placeholder. A diverged run (``reg.check_divergence()``)
    is pruned instead, with the reason in ``failure:reason``.

    Raises:
        ConfigError: ``trial`` is not an Optuna trial. optuna.TrialPruned: the run diverged.
    """
    if not isinstance(trial, optuna.trial.BaseTrial):
        raise ConfigError(f"report_learned() takes an optuna trial, got {type(trial).__name__}")
    try:
        reg.check_divergence()
    except TrainingDiverged as exc:
        trial.set_user_attr(A.FAILURE_REASON, str(exc))
        raise optuna.TrialPruned(f"diverged: {exc}") from exc
    attrs = A.prefixed_learned(reg.learned_values())
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return attrs
