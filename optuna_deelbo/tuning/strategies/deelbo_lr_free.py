"""DE-ELBo with no learning rate to search (issue 33, route b): one run, Prodigy for the weights, Adam for sigma.

The weights train with the learning-rate-free Prodigy (Mishchenko & Defazio 2024, package
``prodigyopt``, extra ``[lrfree]``; multiplier 1, cosine-decayed as SGD's rate is) and the
posterior std's ``rho`` with its own Adam: with ``rho`` inside Prodigy, whose one learned step is
sized for the weights, sigma grew to 0.9-2.5 on digits and the run was not the DE-ELBo's posterior
(:data:`~optuna_deelbo.bayes.WEIGHT_OPTIMIZERS`, refused there). The weight decay is learned as in
every DE-ELBo run, so nothing is searched: the study has one trial, on all N.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_finite
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning.strategies._base import Strategy
from optuna_deelbo.tuning.strategies.deelbo import DEELBoStrategy

__all__ = ["PRODIGY_MULTIPLIER", "SIGMA_ADAM_LR", "LRFreeDEELBoStrategy"]

#: Prodigy's ``lr``: the multiplier of its learned step size (1.0, as its authors recommend).
PRODIGY_MULTIPLIER = 1.0
#: Learning rate of sigma's own Adam (the recipe ablation's ``sigma-adam`` value, benchmarks/results/ablation.md).
SIGMA_ADAM_LR = 0.05


class LRFreeDEELBoStrategy(DEELBoStrategy):
    """One DE-ELBo run on all N: Prodigy for the weights, Adam for sigma, the weight decay learned.

    The study's one trial has ``lr`` = :data:`PRODIGY_MULTIPLIER` (a multiplier, not a step size); the
    task's DE-ELBo recipe is kept except ``weight_optimizer="prodigy"``, ``sigma_optimizer="adam"`` and
    ``sigma_lr``. Never batched (``batched="off"``: the batched runner trains SGD members).

    Args:
        sigma_lr: learning rate of sigma's Adam (default :data:`SIGMA_ADAM_LR`).
    """

    name = "deelbo-lr-free"
    description = (
        "DE-ELBo, no search: one run on all N with the learning-rate-free Prodigy for the weights and "
        "sigma's own Adam; weight decay learned in-loop"
    )

    def __init__(self, sigma_lr: float = SIGMA_ADAM_LR) -> None:
        super().__init__(learning_rates=(PRODIGY_MULTIPLIER,), batched="off")
        self.sigma_lr = positive_finite(sigma_lr, "sigma_lr (deelbo-lr-free)")

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        if learning_rates is not None:
            raise ConfigError(
                "deelbo-lr-free searches no learning rate (Prodigy learns its step): leave --lrs out, or use deelbo"
            )
        return cls()

    def lr_free_task(self, task: TaskSpec) -> TaskSpec:
        """``task`` with its DE-ELBo recipe switched to Prodigy for the weights and Adam for sigma."""
        recipe = task.deelbo_recipe.replace(weight_optimizer="prodigy", sigma_optimizer="adam", sigma_lr=self.sigma_lr)
        return dataclasses.replace(task, recipe=recipe)

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        return super().objective(self.lr_free_task(task))

    def plan_signature(self, task: TaskSpec) -> dict[str, Any]:
        signature = super().plan_signature(self.lr_free_task(task))
        signature["sigma_lr"] = self.sigma_lr
        return signature
