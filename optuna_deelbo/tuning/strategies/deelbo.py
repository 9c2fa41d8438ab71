"""DE-ELBo: grid over 4 learning rates; weight decay learned in-loop; pick by the recipe's selection rule."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._batched import BatchingUnsupported
from optuna_deelbo.tuning._batched import run_batched_trials
from optuna_deelbo.tuning._sampler import DEELBoSampler
from optuna_deelbo.tuning._trial_queue import PlannedStudy
from optuna_deelbo.tuning.strategies._base import Strategy, suggest_hyperparameters

__all__ = ["BATCHED_MODES", "DEELBoStrategy"]

#: ``batched=``: ``"auto"`` (on where it is faster: a CUDA device; see benchmarks/results/batched.md),
#: ``"on"`` (always, falling back to one by one with a warning where the model cannot be batched), ``"off"``.
BATCHED_MODES: tuple[str, ...] = ("auto", "on", "off")


class DEELBoStrategy(Strategy):
    """Four DE-ELBo runs on all N; the lowest score of the DE-ELBo recipe's selection rule wins (no validation set).

    The trial value is that score (``select:<rule>`` user attr; ``train-loss`` by default: the
    final training DE-ELBo loss), see :data:`optuna_deelbo.bayes.SELECTION_RULES`.

    Args:
        learning_rates: the grid (default :data:`~optuna_deelbo.tuning.strategies.LEARNING_RATES`).
        batched: one of :data:`BATCHED_MODES`: train the grid's runs as one batched model
            (:func:`optuna_deelbo.train.train_batched`; the same trials and results, within float
            tolerance) when this process works off the study.
    """

    name = "deelbo"
    description = "DE-ELBo: lr grid (4), weight decay learned in-loop, chosen by the selection rule (no validation set)"
    metric_name = "selection_score"
    retrain_winner = False

    def __init__(self, learning_rates: Sequence[float] | None = None, *, batched: str = "auto") -> None:
        super().__init__(learning_rates)
        if batched not in BATCHED_MODES:
            raise ConfigError(f"unknown batched mode {batched!r}; choose one of {BATCHED_MODES}")
        self.batched = batched

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        return cls(learning_rates, batched=batched)

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        grid = optuna.samplers.GridSampler({"lr": list(self.learning_rates)}, seed=task.seed)
        return DEELBoSampler(grid, learned=("weight_decay",))

    def n_trials(self) -> int:
        return len(self.learning_rates)

    def planned_params(self, task: TaskSpec) -> list[dict[str, Any]]:
        return [{"lr": lr} for lr in self.learning_rates]

    def batches(self, task: TaskSpec) -> bool:
        """Whether :meth:`work_off` trains the runs as one batched model for ``task``."""
        if self.batched == "auto":  # task.device None = CUDA when there is one (resolve_device)
            return torch.cuda.is_available() if task.device is None else torch.device(task.device).type == "cuda"
        return self.batched == "on"

    def work_off(
        self,
        study: PlannedStudy,
        task: TaskSpec,
        *,
        show_progress_bar: bool = False,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> int:
        """The waiting trials as one batched run (:meth:`batches`), else one by one."""
        if self.batches(task):
            try:
                ran = run_batched_trials(
                    study, task, lambda trial: suggest_hyperparameters(trial, self.lr_range)[0], on_trial=on_trial
                )
            except BatchingUnsupported as exc:
                if self.batched == "on":
                    warnings.warn(f"batched search off, trials run one by one: {exc}", RuntimeWarning, stacklevel=2)
            else:  # and whatever was queued meanwhile (a retry), one by one
                return ran + super().work_off(study, task, show_progress_bar=show_progress_bar, on_trial=on_trial)
        return super().work_off(study, task, show_progress_bar=show_progress_bar, on_trial=on_trial)
