"""MAP + TPE over the same (log-uniform) box as the grid, with the grid's trial count by default.

``tpe-reg`` searches the classic regularizers (penalty, dropout, label smoothing, mixup,
cutmix, warm restarts) along with lr x weight decay: the search a practitioner runs when
weight decay alone is not enough.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_int, shown
from optuna_deelbo.regularizers._penalties import PENALTY_NAMES
from optuna_deelbo.regularizers._regularization import FLOAT_SPACE, SEARCHABLE, Regularization
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning._fit import RetrainResult, fit, retrain
from optuna_deelbo.tuning.strategies._base import WEIGHT_DECAY_RANGE, WEIGHT_DECAYS, Strategy

__all__ = ["SEARCHED_REGULARIZERS", "TPERegStrategy", "TPEStrategy", "TrialSeededTPESampler", "suggest_regularization"]

#: What ``tpe-reg`` searches besides lr and weight decay (see :func:`suggest_regularization`).
SEARCHED_REGULARIZERS: tuple[str, ...] = (
    "penalty",
    "dropout",
    "label_smoothing",
    "mixup_alpha",
    "cutmix_alpha",
    "restart_period",
)


def suggest_regularization(trial: optuna.trial.BaseTrial, names: tuple[str, ...]) -> Regularization:
    """Let a (TPE) trial choose the regularizers listed in ``names`` (the others stay off).

    Search space: ``penalty`` in {none, l1, l2, l-half} with log-uniform strength in
    [1e-7, 1e-2]; each continuous setting has a switch ``use_<name>`` in {False, True} and,
    when on, ``dropout``, ``stochastic_depth`` in [0.05, 0.5], ``label_smoothing`` in
    [0.01, 0.3], ``mixup_alpha``, ``cutmix_alpha`` in [0.1, 1], ``erasing_p`` in [0.05, 0.5];
    ``cutout_size`` in {0, ..., 16}; ``restart_period`` in {none, 25, 50, 100} steps. Every
    regularizer can thus be exactly off, as in the plain search.
    """
    unknown = [n for n in names if n not in SEARCHABLE]
    if unknown:
        raise ConfigError(f"unknown regularizer(s) {unknown}; searchable: {SEARCHABLE}")
    values: dict[str, object] = {}
    if "penalty" in names:
        kind = trial.suggest_categorical("penalty", ["none", *PENALTY_NAMES])
        if kind != "none":
            values["penalty"] = kind
            values["penalty_strength"] = trial.suggest_float("penalty_strength", 1e-7, 1e-2, log=True)
    for name, (low, high) in FLOAT_SPACE.items():
        if name in names and trial.suggest_categorical(f"use_{name}", [False, True]):
            values[name] = trial.suggest_float(name, low, high)
    if "cutout_size" in names:
        values["cutout_size"] = trial.suggest_int("cutout_size", 0, 16)
    if "restart_period" in names:
        period = trial.suggest_categorical("restart_period", [0, 25, 50, 100])
        values["restart_period"] = int(period) or None
    return Regularization(**values)  # type: ignore[arg-type]


class TrialSeededTPESampler(optuna.samplers.BaseSampler):
    """Optuna's TPE whose random draws for trial ``k`` depend only on ``(seed, k)``.

    A plain seeded ``TPESampler`` draws from one stream across trials, so after an interruption a
    fresh sampler would propose other values than the uninterrupted run did. Here every trial gets
    a fresh ``TPESampler(seed=f(seed, k))`` (public API only; TPE keeps no other state between
    trials: it reads the finished trials from the study), so trial ``k``'s proposal is a function
    of the seed, ``k`` and the finished trials, and ``optuna-deelbo compare --resume`` (where a
    retried trial runs first, see :class:`~optuna_deelbo.tuning.workers.PlannedStudy`) ends with the
    trials of an uninterrupted run.

    Args:
        seed: the base seed. kwargs: passed to every ``TPESampler``.
    """

    def __init__(self, seed: int, **kwargs: Any) -> None:
        self._base_seed = int(seed)
        self._kwargs = kwargs
        self._tpe = optuna.samplers.TPESampler(seed=self._base_seed, **kwargs)
        self._replay = False

    def trial_seed(self, number: int) -> int:
        """The seed of trial ``number``'s sampler."""
        return (self._base_seed * 1_000_003 + number) % 2**32

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # A retry draws as the trial it retries: one interrupted while its parameters were being sampled left
        # some unset, and the retry's own number would propose other values than the uninterrupted run did.
        number = int(trial.system_attrs.get("failed_trial", trial.number))
        self._tpe = optuna.samplers.TPESampler(seed=self.trial_seed(number), **self._kwargs)
        self._tpe.before_trial(study, trial)
        self._replay = "failed_trial" in trial.system_attrs

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = self._tpe.sample_relative(study, trial, search_space)
        if self._replay:
            # A retry keeps the parameters its trial had drawn (Optuna never draws a stored parameter again), so
            # the stream would be one draw per kept parameter behind the uninterrupted trial's. Optuna asks for
            # the relative draw (lazily) just before the first independent one, so here the kept parameters that
            # trial drew independently are drawn again, in its order, and dropped.
            self._replay = False
            for name, distribution in trial.distributions.items():
                if name not in params and not distribution.single():
                    self._tpe.sample_independent(study, trial, name, distribution)
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)


class TPEStrategy(Strategy):
    """Optuna's TPE on lr x weight decay, chosen by validation NLL, winner retrained on all N.

    Unlike the grid (the paper's protocol: every configuration trained in full), TPE runs with
    Optuna's default :class:`~optuna.pruners.MedianPruner`, as Optuna users run it.

    Args:
        trials: number of trials; default the grid's 24.
    """

    name = "tpe"
    description = "MAP + TPE + median pruning: lr x weight decay (log-uniform), 80/20 split, val NLL, retrain on all N"

    def __init__(self, trials: int | None = None, learning_rates: Sequence[float] | None = None) -> None:
        super().__init__(learning_rates)
        if trials is not None and not isinstance(trials, int):
            raise ConfigError(f"TPE trials must be a positive integer, got {shown(trials)}")
        if trials is not None:
            positive_int(trials, "TPE trials")
        self._trials = trials or len(self.learning_rates) * len(WEIGHT_DECAYS)

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        return cls(trials=tpe_trials, learning_rates=learning_rates)

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        return TrialSeededTPESampler(seed=task.seed)

    def pruner(self) -> optuna.pruners.BasePruner:
        """Optuna's default median pruner on the validation NLL, as an Optuna user would run TPE."""
        return optuna.pruners.MedianPruner()

    def n_trials(self) -> int:
        return self._trials


class TPERegStrategy(TPEStrategy):
    """TPE on lr x weight decay x the classic regularizers, chosen by validation NLL, winner retrained.

    Each trial trains with ``suggest_regularization(trial, regularizers)`` in place of the
    task's own :class:`~optuna_deelbo.regularizers.Regularization`; the winner is retrained on
    all N with the regularizers it chose.

    Args:
        trials: number of trials; default the grid's 24.
        regularizers: names searched (default :data:`SEARCHED_REGULARIZERS`).
    """

    name = "tpe-reg"
    description = (
        "MAP + TPE + median pruning: lr x weight decay x regularizers (penalty, dropout, label smoothing, "
        "mixup, cutmix, warm restarts), 80/20 split, val NLL, retrain on all N"
    )

    def __init__(
        self,
        trials: int | None = None,
        regularizers: tuple[str, ...] = SEARCHED_REGULARIZERS,
        learning_rates: Sequence[float] | None = None,
    ) -> None:
        super().__init__(trials, learning_rates)
        unknown = [n for n in regularizers if n not in SEARCHABLE]
        if not regularizers or unknown:
            raise ConfigError(
                f"tpe-reg searches a non-empty subset of {SEARCHABLE}; got {tuple(regularizers)!r}"
                + (f" (unknown: {unknown})" if unknown else "")
            )
        self.regularizers = tuple(regularizers)

    def regularization_of(self, params: Mapping[str, Any]) -> Regularization:
        """The regularizers a trial with these ``params`` (a finished trial's) trained with."""
        return suggest_regularization(optuna.trial.FixedTrial(dict(params)), self.regularizers)

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        def objective(trial: optuna.trial.Trial) -> float:
            lr = trial.suggest_float("lr", *self.lr_range, log=self.lr_range[0] < self.lr_range[1])
            weight_decay = trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
            regularization = suggest_regularization(trial, self.regularizers)
            return fit(
                trial, dataclasses.replace(task, regularization=regularization), lr=lr, weight_decay=weight_decay
            )

        return objective

    def retrain_best(self, task: TaskSpec, best: FrozenTrial) -> RetrainResult:
        regularization = self.regularization_of(best.params)
        return retrain(
            dataclasses.replace(task, regularization=regularization),
            best.params["lr"],
            best.params["weight_decay"],
        )
