"""One training run's classic regularizers, as one value: what TaskSpec carries and TPE searches.

:class:`Regularization` gathers the regularizers of the lecture list that are not the prior
itself (weight decay / lambda is handled by the objectives): L1, L2 and nonconvex L1/2
penalties, head dropout, stochastic depth, label smoothing, mixup, cutmix, cutout, random
erasing, cosine learning rate with warm restarts and early stopping. Everything is off by
default; each piece lives in its own module and this one only wires them into a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import nonnegative_finite
from optuna_deelbo.regularizers._mixing import BatchMixing
from optuna_deelbo.regularizers._penalties import PENALTY_NAMES, Penalty
from optuna_deelbo.regularizers._structural import check_probability, set_head_dropout, set_stochastic_depth

__all__ = ["FLOAT_SPACE", "RETRAIN_RULES", "SEARCHABLE", "Regularization"]

#: How an early-stopped MAP winner is retrained on train + val (Goodfellow et al. Alg. 7.2 / 7.3).
RETRAIN_RULES: tuple[str, ...] = ("steps", "continue")

#: Ranges :func:`suggest_regularization` searches for the continuous settings once switched on
#: (each has its own on/off parameter ``use_<name>``, so "off" is a point TPE can find exactly).
FLOAT_SPACE: dict[str, tuple[float, float]] = {
    "dropout": (0.05, 0.5),
    "stochastic_depth": (0.05, 0.5),
    "label_smoothing": (0.01, 0.3),
    "mixup_alpha": (0.1, 1.0),
    "cutmix_alpha": (0.1, 1.0),
    "erasing_p": (0.05, 0.5),
}
#: Every name :func:`suggest_regularization` can search.
SEARCHABLE: tuple[str, ...] = ("penalty", *FLOAT_SPACE, "cutout_size", "restart_period")


@dataclass(frozen=True)
class Regularization:
    """Classic regularizers for one run (all off by default).

    Attributes:
        penalty: ``"l1"``, ``"l2"``, ``"l-half"`` (smoothed L1/2) or ``None``.
        penalty_strength: its coefficient per training example (like weight decay).
        dropout: probability of dropping a head input feature.
        stochastic_depth: largest residual-branch drop probability (linear decay over blocks).
        label_smoothing, mixup_alpha, cutmix_alpha, cutout_size, erasing_p: see
            :class:`~optuna_deelbo.regularizers.BatchMixing` (images ``(B, C, H, W)`` only, except smoothing).
        restart_period: steps of the first cosine cycle with warm restarts (``None`` = one cycle).
        patience: early stopping after this many validation checks without improvement (MAP only).
        retrain: how an early-stopped MAP winner is retrained on all N: ``"steps"`` (from scratch
            for the best step count) or ``"continue"`` (keep training until the held-out part's
            loss reaches the early-stopped training loss, capped at the step budget).
    """

    penalty: str | None = None
    penalty_strength: float = 0.0
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutout_size: int = 0
    erasing_p: float = 0.0
    restart_period: int | None = None
    patience: int | None = None
    retrain: Literal["steps", "continue"] = "steps"

    def __post_init__(self) -> None:
        if self.penalty is not None and self.penalty not in PENALTY_NAMES:
            raise ConfigError(f"unknown penalty {self.penalty!r}; choose one of {PENALTY_NAMES} or None")
        nonnegative_finite(self.penalty_strength, "penalty_strength")
        for name in ("dropout", "stochastic_depth"):
            check_probability(getattr(self, name), name)
        if self.retrain not in RETRAIN_RULES:
            raise ConfigError(f"unknown retrain rule {self.retrain!r}; choose one of {RETRAIN_RULES}")
        BatchMixing(  # validates the mixing fields with their own messages
            n_classes=2,
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            cutout_size=self.cutout_size,
            erasing_p=self.erasing_p,
            label_smoothing=self.label_smoothing,
        )

    @property
    def penalty_fn(self) -> Penalty | None:
        """The weight penalty, or ``None`` when off."""
        if self.penalty is None or self.penalty_strength == 0.0:
            return None
        return Penalty(self.penalty, self.penalty_strength)

    def mixing(self, n_classes: int) -> BatchMixing | None:
        """The batch augmentation producing soft targets over ``n_classes``, or ``None`` when off."""
        mixing = BatchMixing(
            n_classes=n_classes,
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            cutout_size=self.cutout_size,
            erasing_p=self.erasing_p,
            label_smoothing=self.label_smoothing,
        )
        return None if mixing.is_identity else mixing

    def apply_to_model(self, model: nn.Module, head_prefixes: tuple[str, ...]) -> None:
        """Switch on head dropout and stochastic depth in ``model`` (in place) when asked for."""
        if self.dropout > 0:
            set_head_dropout(model, head_prefixes, self.dropout)
        if self.stochastic_depth > 0:
            set_stochastic_depth(model, self.stochastic_depth)
