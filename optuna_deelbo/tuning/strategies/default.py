"""No search: one MAP run on all N at common settings (issue 33's ``default`` and ``lr-free``).

What many users run instead of a search, and the floor every search has to beat: SGD at
lr 0.01 (``default``), or the learning-rate-free Prodigy (``lr-free``), with the weight decay
people copy from recipes, 5e-4 for convolutional networks and 0.01 for attention-based encoders
(the AdamW-era default of text fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from torch import nn

from optuna_deelbo._validation import learning_rate, nonnegative_finite
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning._fit import fit_once
from optuna_deelbo.tuning.strategies._base import Strategy

__all__ = ["DEFAULT_LR", "DefaultStrategy", "LRFreeStrategy", "default_weight_decay"]

#: The default learning rate of the ``default`` strategy (SGD with the tasks' momentum).
DEFAULT_LR = 0.01
#: The common weight decay for convolutional networks and for attention-based encoders.
CNN_WEIGHT_DECAY = 5e-4
ENCODER_WEIGHT_DECAY = 0.01


def default_weight_decay(model: nn.Module) -> float:
    """0.01 for a model with an attention module (a class named ``*Attention*``), else 5e-4."""
    attention = any("attention" in type(m).__name__.lower() for m in model.modules())
    return ENCODER_WEIGHT_DECAY if attention else CNN_WEIGHT_DECAY


class DefaultStrategy(Strategy):
    """One MAP run on all N at ``lr`` and the model's common weight decay; nothing is searched.

    The learning-rate grid is not used. The single trial's model is the final model (no
    retraining); its parameters are single-valued, so optuna-dashboard shows what it ran.

    Args:
        lr: learning rate (default :data:`DEFAULT_LR`).
        weight_decay: default :func:`default_weight_decay` of the task's model.
    """

    name = "default"
    description = (
        "MAP, no search: one run on all N at lr 0.01 and the common weight decay "
        "(5e-4 for CNNs, 0.01 for attention encoders)"
    )
    metric_name = "train_loss"
    retrain_winner = False
    #: ``TrainConfig.weight_optimizer`` of the run.
    weight_optimizer = "sgd"
    #: The learning rate a plan signature leaves out (the class's own).
    standard_lr = DEFAULT_LR

    def __init__(self, lr: float = DEFAULT_LR, weight_decay: float | None = None) -> None:
        super().__init__()
        self.lr = learning_rate(lr, "the default strategy's lr")
        self.weight_decay = None if weight_decay is None else nonnegative_finite(weight_decay, "weight_decay")

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        return cls()  # one run at the task's default settings: no grid to take

    def sampler(self, task: TaskSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=task.seed)  # draws nothing: both parameters are single-valued

    def n_trials(self) -> int:
        return 1

    def weight_decay_for(self, task: TaskSpec) -> float:
        """The weight decay the run uses on ``task``."""
        return self.weight_decay if self.weight_decay is not None else default_weight_decay(task.build_model())

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        weight_decay = self.weight_decay_for(task)

        def objective(trial: optuna.trial.Trial) -> float:
            lr = trial.suggest_float("lr", self.lr, self.lr)
            wd = trial.suggest_float("weight_decay", weight_decay, weight_decay)
            return fit_once(trial, task, lr=lr, weight_decay=wd, weight_optimizer=self.weight_optimizer)

        return objective

    def plan_signature(self, task: TaskSpec) -> dict[str, Any]:
        signature = super().plan_signature(task)
        signature.pop("learning_rates", None)  # the grid is not used
        if self.lr != self.standard_lr or self.weight_decay is not None:
            signature["lr"], signature["weight_decay"] = self.lr, self.weight_decay
        return signature


class LRFreeStrategy(DefaultStrategy):
    """One MAP run on all N with the learning-rate-free Prodigy and the model's common weight decay.

    Prodigy (``TrainConfig.weight_optimizer="prodigy"``, package ``prodigyopt``, extra ``[lrfree]``)
    learns its step size; ``lr`` is its multiplier (1.0, cosine-decayed as SGD's learning rate is).

    Args:
        weight_decay: default :func:`default_weight_decay` of the task's model.
    """

    name = "lr-free"
    description = (
        "MAP, no search: one run on all N with the learning-rate-free Prodigy (multiplier 1, cosine) and the "
        "common weight decay (5e-4 for CNNs, 0.01 for attention encoders)"
    )
    weight_optimizer = "prodigy"
    standard_lr = 1.0

    def __init__(self, weight_decay: float | None = None) -> None:
        super().__init__(lr=1.0, weight_decay=weight_decay)
