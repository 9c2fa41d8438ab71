"""Regularization-strength schedules (Lu et al. 2017): pull-down, pull-up, constant and a feedback rule.

The strength ("lambda") is in weight-decay units, i.e. the coefficient the training loop hands
to its weight penalty. Steps are 1-based optimiser steps (parameter updates), not epochs.

* :class:`StepSchedule` is piecewise constant: ``values[0]`` for steps ``1 .. steps_per_value``,
  ``values[1]`` for the next ``steps_per_value`` steps, and so on; :func:`pull_down` orders the
  values strong to weak, :func:`pull_up` weak to strong and :func:`constant` is the fixed-lambda
  baseline with the same total number of steps.
* :class:`AdaptiveFeedback` is a small state machine the loop calls every ``every`` steps with
  train and validation accuracy: it raises lambda while training accuracy runs ahead of
  validation accuracy and lowers it when the two are close.

Nothing here trains anything; the loop reads :meth:`StepSchedule.value_at` or
:attr:`AdaptiveFeedback.value` before each step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import nonnegative_finite, positive_finite, positive_int

__all__ = ["AdaptiveFeedback", "StepSchedule", "constant", "pull_down", "pull_up"]


def _check_values(values: object) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of finite floats >= 0 (weight-decay units)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"schedule values must be a sequence of numbers, got {values!r}")
    checked = tuple(nonnegative_finite(v, f"schedule value #{i}") for i, v in enumerate(values))
    if not checked:
        raise ConfigError("schedule values must not be empty, got ()")
    return checked


def _check_step(step: object) -> int:
    """``step`` as a 1-based optimiser step (an int >= 1)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"step must be an integer >= 1 (steps are 1-based), got {step!r}")
    return step


@dataclass(frozen=True)
class StepSchedule:
    """A piecewise-constant lambda schedule over 1-based optimiser steps.

    Attributes:
        values: lambda for each block, in weight-decay units, finite, >= 0, at least one.
        steps_per_value: optimiser steps each value is held for, > 0.
    """

    values: tuple[float, ...]
    steps_per_value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _check_values(self.values))
        object.__setattr__(self, "steps_per_value", positive_int(self.steps_per_value, "steps_per_value"))

    @property
    def total_steps(self) -> int:
        """Optimiser steps the schedule spans: ``len(values) * steps_per_value``."""
        return len(self.values) * self.steps_per_value

    def value_at(self, step: int) -> float:
        """Lambda (weight-decay units) for 1-based optimiser ``step``; past ``total_steps`` the last value."""
        index = (_check_step(step) - 1) // self.steps_per_value
        return self.values[min(index, len(self.values) - 1)]

    def trajectory(self) -> list[tuple[int, float]]:
        """``[(start_step, lambda), ...]``: the 1-based optimiser step at which each value takes over."""
        return [(1 + i * self.steps_per_value, value) for i, value in enumerate(self.values)]


def pull_down(values: Iterable[float], steps_per_value: int) -> StepSchedule:
    """Lu et al.'s pull-down schedule: ``values`` sorted strong to weak (high -> low lambda).

    Args:
        values: lambdas in weight-decay units, finite, >= 0; any order.
        steps_per_value: optimiser steps each value is held for, > 0.
    """
    return StepSchedule(tuple(sorted(_check_values(values), reverse=True)), steps_per_value)


def pull_up(values: Iterable[float], steps_per_value: int) -> StepSchedule:
    """Lu et al.'s pull-up schedule: ``values`` sorted weak to strong (low -> high lambda).

    Args:
        values: lambdas in weight-decay units, finite, >= 0; any order.
        steps_per_value: optimiser steps each value is held for, > 0.
    """
    return StepSchedule(tuple(sorted(_check_values(values))), steps_per_value)


def constant(value: float, total_steps: int) -> StepSchedule:
    """The fixed-lambda baseline: ``value`` for all ``total_steps`` optimiser steps.

    To compare fairly with a pull-down / pull-up schedule pass its ``total_steps``, so both runs
    make the same number of parameter updates.

    Args:
        value: lambda in weight-decay units, finite, >= 0.
        total_steps: optimiser steps, > 0.
    """
    return StepSchedule((value,), total_steps)


class AdaptiveFeedback:
    """Feedback rule for lambda from the train - validation accuracy gap, updated every ``every`` steps.

    At each :meth:`update` with gap ``g = train_accuracy - val_accuracy`` (accuracies as fractions
    in [0, 1]): ``g > margin`` multiplies lambda by ``factor`` (overfitting: regularize more);
    ``g < close`` divides it by ``factor`` (the two agree, or validation is ahead: regularize
    less); otherwise lambda is kept. The result is clipped to ``[lower, upper]``. Comparisons are
    strict, so a gap of exactly ``margin`` or ``close`` keeps lambda.

    Args:
        initial: starting lambda in weight-decay units, ``lower <= initial <= upper``.
        margin: gap (accuracy fraction) above which lambda grows, ``close < margin <= 1``.
        close: gap (accuracy fraction) below which lambda shrinks, ``0 <= close < margin``.
        factor: multiplicative step for lambda, finite, > 1.
        lower: smallest lambda (weight-decay units), finite, > 0.
        upper: largest lambda (weight-decay units), finite, >= lower.
        every: optimiser steps between updates, > 0 (the loop calls :meth:`update` when
            :meth:`is_due` says so).

    Attributes:
        history: one ``(step, lambda_after_update, train_accuracy, val_accuracy)`` per update.
    """

    def __init__(
        self,
        initial: float,
        *,
        margin: float = 0.05,
        close: float = 0.01,
        factor: float = 2.0,
        lower: float = 1e-7,
        upper: float = 1e-1,
        every: int = 50,
    ) -> None:
        self.margin = nonnegative_finite(margin, "margin")
        self.close = nonnegative_finite(close, "close")
        if self.margin > 1:
            raise ConfigError(f"margin is an accuracy gap and must be <= 1, got {margin!r}")
        if self.close >= self.margin:
            raise ConfigError(f"close must be < margin, got close={close!r} and margin={margin!r}")
        self.factor = positive_finite(factor, "factor")
        if self.factor <= 1:
            raise ConfigError(f"factor must be > 1, got {factor!r}")
        self.lower = positive_finite(lower, "lower")
        self.upper = positive_finite(upper, "upper")
        self.initial = positive_finite(initial, "initial lambda")
        if not self.lower <= self.initial <= self.upper:
            raise ConfigError(
                f"need lower <= initial <= upper, got lower={lower!r}, initial={initial!r}, upper={upper!r}"
            )
        self.every = positive_int(every, "every")
        self.history: list[tuple[int, float, float, float]] = []
        self._value = self.initial

    @property
    def value(self) -> float:
        """The current lambda in weight-decay units."""
        return self._value

    def state_dict(self) -> dict[str, object]:
        """The current value and update history (for training checkpoints)."""
        return {"value": self._value, "history": [list(row) for row in self.history]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` returned."""
        history = state["history"]
        assert isinstance(history, list)
        self.history = [(int(s), float(v), float(t), float(a)) for s, v, t, a in history]
        self._value = float(state["value"])  # type: ignore[arg-type]

    def is_due(self, step: int) -> bool:
        """Whether 1-based optimiser ``step`` is an update step (a multiple of ``every``)."""
        return _check_step(step) % self.every == 0

    def update(self, step: int, train_accuracy: float, val_accuracy: float) -> float:
        """Apply the rule after optimiser ``step`` and return the new lambda (weight-decay units).

        Args:
            step: 1-based optimiser step, strictly greater than at the previous update.
            train_accuracy: accuracy on training examples, a fraction in [0, 1].
            val_accuracy: accuracy on validation examples, a fraction in [0, 1].
        """
        step = _check_step(step)
        if self.history and step <= self.history[-1][0]:
            raise ConfigError(
                f"update steps must strictly increase, got step {step!r} after step {self.history[-1][0]}"
            )
        train = _accuracy(train_accuracy, "train_accuracy")
        val = _accuracy(val_accuracy, "val_accuracy")
        gap = train - val
        if gap > self.margin:
            proposed = self._value * self.factor
        elif gap < self.close:
            proposed = self._value / self.factor
        else:
            proposed = self._value
        self._value = min(self.upper, max(self.lower, proposed))
        self.history.append((step, self._value, train, val))
        return self._value


def _accuracy(value: object, what: str) -> float:
    """``value`` as a float accuracy fraction in [0, 1]."""
    number = nonnegative_finite(value, what)
    if number > 1:
        raise ConfigError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return number
