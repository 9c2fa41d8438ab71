"""Early stopping with patience, and the two retraining rules of Goodfellow et al., *Deep Learning* §7.8.

Steps are 1-based optimiser steps (parameter updates); losses are in whatever units the caller
measures them (e.g. mean negative log-likelihood in nats per example), the same for every call.

* :class:`EarlyStopping` is Algorithm 7.1: track the best validation loss and stop after
  ``patience`` evaluations without an improvement.
* :func:`retrain_steps` is Algorithm 7.2: retrain from scratch on train + validation for the
  early-stopped number of steps.
* :func:`continue_until` is Algorithm 7.3: keep training the early-stopped model on train +
  validation until the loss on the validation part falls to the training loss at the best step.

Nothing here trains anything: the loop calls these with the numbers it measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo._validation import nonnegative_finite, positive_int

__all__ = ["ContinueResult", "EarlyStopping", "continue_until", "retrain_steps"]


def _real(value: object, what: str) -> float:
    """``value`` as a float if it is a real number (bools excluded); NaN and infinities pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a real number, got {value!r}")
    return float(value)


def _finite_real(value: object, what: str) -> float:
    """``value`` as a float if it is a finite real number (bools excluded)."""
    number = _real(value, what)
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return number


#: The attributes :meth:`EarlyStopping.update` changes.
_EARLY_STOPPING_STATE = ("best_step", "best_val_loss", "train_loss_at_best", "stopped_step", "last_step", "bad_updates")


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` consecutive updates.

    An update improves when ``val_loss < best_val_loss - min_delta``; a non-finite ``val_loss``
    (NaN, +-inf) never improves. Calling :meth:`update` after it returned True is an error.

    Args:
        patience: consecutive updates without improvement that stop training, > 0.
        min_delta: how much lower (loss units) a loss must be to count as an improvement, >= 0;
            with 0 any strict decrease counts and a plateau does not.

    Attributes:
        best_step: optimiser step of the best validation loss so far (``None`` before any finite loss).
        best_val_loss: the best validation loss so far (``inf`` before any finite loss).
        train_loss_at_best: the ``train_loss`` passed with the best update (``None`` if not given);
            the target of :func:`continue_until`.
        stopped_step: the step at which :meth:`update` returned True (``None`` while running).
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = positive_int(patience, "patience")
        self.min_delta = nonnegative_finite(min_delta, "min_delta")
        self.best_step: int | None = None
        self.best_val_loss = math.inf
        self.train_loss_at_best: float | None = None
        self.stopped_step: int | None = None
        self.last_step: int | None = None
        self.bad_updates = 0

    @property
    def stopped(self) -> bool:
        """Whether :meth:`update` has asked to stop."""
        return self.stopped_step is not None

    def state_dict(self) -> dict[str, float | int | None]:
        """What :meth:`update` has accumulated (for training checkpoints)."""
        return {k: getattr(self, k) for k in _EARLY_STOPPING_STATE}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for key in _EARLY_STOPPING_STATE:
            setattr(self, key, state[key])

    def update(self, step: int, val_loss: float, train_loss: float | None = None) -> bool:
        """Record the losses measured after optimiser ``step``; True when training should stop.

        Args:
            step: 1-based optimiser step, strictly greater than at the previous update.
            val_loss: validation loss (loss units); non-finite counts as no improvement.
            train_loss: training loss at the same step (loss units), kept if this update is the best.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"step must be an integer >= 1 (steps are 1-based), got {step!r}")
        if self.stopped_step is not None:
            raise ConfigError(f"early stopping already stopped at step {self.stopped_step}; got update at step {step}")
        if self.last_step is not None and step <= self.last_step:
            raise ConfigError(f"update steps must strictly increase, got step {step} after step {self.last_step}")
        loss = _real(val_loss, "val_loss")
        train = None if train_loss is None else _real(train_loss, "train_loss")
        self.last_step = step
        if math.isfinite(loss) and loss < self.best_val_loss - self.min_delta:
            self.best_step, self.best_val_loss, self.train_loss_at_best = step, loss, train
            self.bad_updates = 0
            return False
        self.bad_updates += 1
        if self.bad_updates >= self.patience:
            self.stopped_step = step
            return True
        return False


def retrain_steps(best_step: int) -> int:
    """Algorithm 7.2: optimiser steps to retrain from scratch on train + validation (= ``best_step``).

    Early stopping on the training subset found ``best_step`` (``i*``); the second run starts
    from fresh initial weights on all the data and makes exactly that many parameter updates.
    We reproduce the number of parameter updates rather than the number of passes over the
    data because the learning-rate schedule, the weight-decay schedule and the implicit
    regularization of early stopping are all indexed by updates. The alternative the book
    mentions, matching epochs, would use ``best_step * n_train_and_val / n_train`` updates
    instead (more updates, since each pass over the larger set takes more batches).

    Args:
        best_step: :attr:`EarlyStopping.best_step`, a 1-based optimiser step, > 0.
    """
    return positive_int(best_step, "best_step")


@dataclass(frozen=True)
class ContinueResult:
    """Outcome of :func:`continue_until`.

    Attributes:
        steps: optimiser steps taken on train + validation.
        reached: whether the loss fell to the target (False: stopped by ``max_steps``).
        final_loss: the last loss on the validation part (loss units).
        history: ``(steps_so_far, loss)`` after each ``step_fn`` call.
    """

    steps: int
    reached: bool
    final_loss: float
    history: list[tuple[int, float]] = field(default_factory=list)


def continue_until(
    target_loss: float,
    step_fn: Callable[[], float],
    *,
    max_steps: int,
    check_every: int = 1,
    initial_loss: float | None = None,
) -> ContinueResult:
    """Algorithm 7.3: keep training on train + validation until the validation-part loss <= ``target_loss``.

    The loss on the validation part need not ever fall to the target (the book warns the loop
    may not terminate), so ``max_steps`` is mandatory.

    Args:
        target_loss: the early-stopped training loss, :attr:`EarlyStopping.train_loss_at_best`
            (loss units), finite.
        step_fn: performs ``check_every`` optimiser steps on train + validation and returns the
            current loss on the validation part (loss units, a Python float).
        max_steps: most optimiser steps to take, > 0, a multiple of ``check_every``.
        check_every: optimiser steps per ``step_fn`` call, > 0.
        initial_loss: the validation-part loss before continuing; when given and already
            <= ``target_loss`` no step is taken (the book checks before training).

    Raises:
        ConfigError: on a bad argument or a ``step_fn`` that returns a non-number.
        TrainingDiverged: when ``step_fn`` returns a non-finite loss.
    """
    target = _finite_real(target_loss, "target_loss")
    if not callable(step_fn):
        raise ConfigError(f"step_fn must be callable, got {step_fn!r}")
    cap = positive_int(max_steps, "max_steps")
    chunk = positive_int(check_every, "check_every")
    if cap % chunk:
        raise ConfigError(f"max_steps must be a multiple of check_every ({chunk}), got {max_steps!r}")
    if initial_loss is not None and _real(initial_loss, "initial_loss") <= target:
        return ContinueResult(steps=0, reached=True, final_loss=float(initial_loss))
    steps = 0
    history: list[tuple[int, float]] = []
    while steps < cap:
        returned = step_fn()
        loss = _real(returned, "the loss returned by step_fn")
        steps += chunk
        if not math.isfinite(loss):
            raise TrainingDiverged(f"non-finite loss {loss} after {steps} steps of continued training")
        history.append((steps, loss))
        if loss <= target:
            return ContinueResult(steps=steps, reached=True, final_loss=loss, history=history)
    return ContinueResult(steps=steps, reached=False, final_loss=history[-1][1], history=history)
