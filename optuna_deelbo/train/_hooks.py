"""The training loop's concerns besides the step itself, one small class each, called at named points.

Every hook sees the run's :class:`~optuna_deelbo.train.LoopState` and may act

* ``before_forward(step)``: before the step's forward pass (a scheduled weight decay is set here);
* ``after_step(step, logged)``: after the optimiser step; may add values to the step's log;
* ``on_log(step, row)``: every ``log_every`` steps, with the row about to enter the history;
* ``end_of_step(step) -> bool``: last; ``True`` ends training (the hooks after it are skipped);
* ``close()`` always, ``finish()`` after a run that was not interrupted by an exception;
* ``state()`` / ``restore(state)``: their part of a checkpoint.

:func:`optuna_deelbo.train.train_model` builds them in this order: step callback, weight-decay
control, divergence check, evaluation (validation, pruning, early stopping), checkpointing,
progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from optuna_deelbo._optuna_trial import Trial, report_or_prune
from optuna_deelbo.bayes._objectives import MAPObjective
from optuna_deelbo.train._checkpoint import CheckpointHook, copy_tensors
from optuna_deelbo.train._divergence import DivergenceMonitor
from optuna_deelbo.train._early_stopping import EarlyStopping
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule
from optuna_deelbo.train._state import LoopState
from optuna_deelbo.train._types import evaluate

__all__ = [
    "CheckpointWriter",
    "DivergenceCheck",
    "Evaluation",
    "ProgressBar",
    "StepCallback",
    "TrainHook",
    "WeightDecayControl",
]

Split = tuple[Tensor, Tensor]


class TrainHook:
    """Base class: every point does nothing (see the module docstring for when each is called)."""

    def before_forward(self, step: int) -> None:
        return None

    def after_step(self, step: int, logged: dict[str, Tensor]) -> None:
        return None

    def on_log(self, step: int, row: dict[str, float]) -> None:
        return None

    def end_of_step(self, step: int) -> bool:
        return False

    def close(self) -> None:
        return None

    def finish(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        return None


class StepCallback(TrainHook):
    """The caller's ``on_step(step)`` after every optimiser step (e.g. SWAG collection)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def after_step(self, step: int, logged: dict[str, Tensor]) -> None:
        self.fn(step)


class WeightDecayControl(TrainHook):
    """Sets a MAP objective's ``weight_decay`` each step from a schedule, logs it, runs the feedback rule.

    A :class:`StepSchedule` gives the value per step (pull-down / pull-up); an
    :class:`AdaptiveFeedback` is updated every ``every`` steps from the training accuracy on up to
    1,024 fixed training examples against the validation accuracy.
    """

    def __init__(
        self,
        loop: LoopState,
        objective: MAPObjective,
        schedule: StepSchedule | AdaptiveFeedback,
        val: Split | None,
        eval_transform: Callable[[Tensor], Tensor] | None,
    ) -> None:
        self.loop, self.objective, self.schedule, self.val = loop, objective, schedule, val
        self.eval_transform = eval_transform
        n = min(int(loop.x.shape[0]), 1024)
        self.probe = loop.x[:n], loop.y[:n]

    def before_forward(self, step: int) -> None:
        schedule = self.schedule
        self.objective.weight_decay = schedule.value_at(step) if isinstance(schedule, StepSchedule) else schedule.value

    def after_step(self, step: int, logged: dict[str, Tensor]) -> None:
        logged["weight_decay"] = torch.tensor(self.objective.weight_decay)

    def end_of_step(self, step: int) -> bool:
        schedule = self.schedule
        if isinstance(schedule, AdaptiveFeedback) and step % schedule.every == 0:
            assert self.val is not None  # train() checks
            model, amp, transform = self.objective.model, self.loop.amp, self.eval_transform
            train_acc = evaluate(model, *self.probe, amp=amp, transform=transform).accuracy
            val_acc = evaluate(model, *self.val, amp=amp, transform=transform).accuracy
            schedule.update(step, train_acc, val_acc)
        return False

    def state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict() if isinstance(self.schedule, AdaptiveFeedback) else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        if isinstance(self.schedule, AdaptiveFeedback) and state.get("schedule") is not None:
            self.schedule.load_state_dict(state["schedule"])


class DivergenceCheck(TrainHook):
    """Ends a run as diverged (non-finite values, exploding sigma, runaway NLL) at every log row."""

    def __init__(self, loop: LoopState) -> None:
        self.loop = loop
        self.monitor = DivergenceMonitor(loop.config.divergence, loop.config.lr)

    def after_step(self, step: int, logged: dict[str, Tensor]) -> None:
        self.monitor.start(logged["nll"])  # keeps the first NLL it sees (read at the next check)

    def on_log(self, step: int, row: dict[str, float]) -> None:
        self.monitor.check(step, row, self.loop.objective.weight_posterior())

    def finish(self) -> None:
        # with early stopping the run ends on its best weights, not on the last checked ones
        if self.loop.config.patience is None:
            self.monitor.check_end()


class Evaluation(TrainHook):
    """Every ``eval_every`` steps: the validation NLL (or the running loss), reported to the trial
    (which may prune), and early stopping on it (the best weights are restored at the end)."""

    def __init__(
        self,
        loop: LoopState,
        trial: Trial | None,
        val: Split | None,
        eval_transform: Callable[[Tensor], Tensor] | None,
    ) -> None:
        self.loop, self.trial, self.val, self.eval_transform = loop, trial, val, eval_transform
        patience = loop.config.patience
        self.stopper = EarlyStopping(patience) if patience is not None else None
        self.best_state: dict[str, Any] | None = None
        self._last_loss = torch.zeros(())

    def after_step(self, step: int, logged: dict[str, Tensor]) -> None:
        self._last_loss = logged["loss"]

    def end_of_step(self, step: int) -> bool:
        loop = self.loop
        at_eval = step % loop.config.eval_every == 0 or step == loop.config.steps
        if not at_eval or (self.trial is None and self.stopper is None):
            return False
        if self.val is not None:
            metrics = evaluate(loop.objective.model, *self.val, amp=loop.amp, transform=self.eval_transform)
            loop.result.val_history.append((step, metrics.nll, metrics.accuracy))
            value = metrics.nll
        else:
            value = loop.running_loss(self._last_loss)
        if self.trial is not None:
            report_or_prune(self.trial, value, step)
        if self.stopper is None:
            return False
        stop = self.stopper.update(step, value, loop.running_loss(self._last_loss))
        if self.stopper.best_step == step:
            self.best_state = copy_tensors(loop.objective.state_dict(), loop.device)
        return stop

    def finish(self) -> None:
        if self.stopper is not None and self.best_state is not None:
            self.loop.objective.load_state_dict(self.best_state)
            result = self.loop.result
            result.best_step, result.train_loss_at_best = self.stopper.best_step, self.stopper.train_loss_at_best

    def state(self) -> dict[str, Any]:
        cpu = torch.device("cpu")
        return {
            "stopper": self.stopper.state_dict() if self.stopper is not None else None,
            "best_state": copy_tensors(self.best_state, cpu) if self.best_state is not None else None,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if self.stopper is not None and state.get("stopper") is not None:
            self.stopper.load_state_dict(state["stopper"])
        if state.get("best_state") is not None:
            self.best_state = copy_tensors(state["best_state"], self.loop.device)


class CheckpointWriter(TrainHook):
    """``hook.save(state)`` after every ``hook.every``-th step but the last; ``hooks`` add their state."""

    def __init__(self, loop: LoopState, hook: CheckpointHook, hooks: list[TrainHook]) -> None:
        self.loop, self.hook, self.hooks = loop, hook, hooks

    def end_of_step(self, step: int) -> bool:
        if step % self.hook.every == 0 and step < self.loop.config.steps:
            extra: dict[str, Any] = {}
            for hook in self.hooks:
                extra.update(hook.state())
            self.hook.save(self.loop.snapshot(step, extra))
        return False


class ProgressBar(TrainHook):
    """A tqdm bar over the steps, with the latest loss and lambda."""

    def __init__(self, loop: LoopState, desc: str) -> None:
        config = loop.config
        self.bar = tqdm(
            total=config.steps,
            initial=loop.first_step - 1,
            desc=desc,
            disable=not config.progress,
            leave=False,
            dynamic_ncols=True,
        )

    def on_log(self, step: int, row: dict[str, float]) -> None:
        self.bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "lambda") if k in row}, refresh=False)

    def end_of_step(self, step: int) -> bool:
        self.bar.update(1)
        return False

    def close(self) -> None:
        self.bar.close()
