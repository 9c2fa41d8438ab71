"""The one training loop, shared by every strategy (MAP or DE-ELBo, tuning or retraining).

It knows nothing about which strategy calls it: it minimises an :class:`Objective` with SGD
(Nesterov momentum 0.9 and a cosine learning-rate decay by default), clips the gradient norm,
keeps the data on the device, uses bf16 autocast on CUDA, draws a tqdm progress bar, and,
given an Optuna trial, reports intermediate values and honours pruning. With a
:class:`~optuna_deelbo.train.CheckpointHook` it hands its whole state over every ``every``
steps, and ``resume=`` continues from such a state to the same final weights and losses.

The step itself and the run's state are :class:`~optuna_deelbo.train.LoopState`'s; every
other concern is a hook of :mod:`optuna_deelbo.train._hooks`, called at named points.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._interrupts import raise_pending_interrupt
from optuna_deelbo._optuna_trial import Trial
from optuna_deelbo.bayes._objectives import MAPObjective, Objective
from optuna_deelbo.train._checkpoint import CheckpointHook
from optuna_deelbo.train._hooks import (
    CheckpointWriter,
    DivergenceCheck,
    Evaluation,
    ProgressBar,
    StepCallback,
    TrainHook,
    WeightDecayControl,
)
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule
from optuna_deelbo.train._state import LoopState
from optuna_deelbo.train._types import Metrics, TrainConfig, TrainResult, evaluate, resolve_device, run_fingerprint

__all__ = ["Metrics", "TrainConfig", "TrainResult", "evaluate", "resolve_device", "run_fingerprint", "train_model"]


def _check_extras(
    objective: Objective,
    config: TrainConfig,
    val: tuple[Tensor, Tensor] | None,
    schedule: StepSchedule | AdaptiveFeedback | None,
) -> None:
    if config.patience is not None and val is None:
        raise ConfigError("early stopping (patience) needs a validation set")
    if schedule is not None and not isinstance(objective, MAPObjective):
        raise ConfigError(f"a weight-decay schedule needs a MAP objective, got {type(objective).__name__}")
    if isinstance(schedule, AdaptiveFeedback) and val is None:
        raise ConfigError("the adaptive weight-decay rule compares train and validation accuracy: pass val")


def train_model(
    objective: Objective,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    val: tuple[Tensor, Tensor] | None = None,
    trial: Trial | None = None,
    desc: str = "train",
    transform: Callable[[Tensor], Tensor] | None = None,
    eval_transform: Callable[[Tensor], Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
    mixing: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    weight_decay_schedule: StepSchedule | AdaptiveFeedback | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Minimise ``objective`` on ``(x, y)``; the model's parameters are updated in place.

    With ``config.channels_last`` / ``config.compile`` the model is also converted to NHWC /
    compiled in place. The host waits for the device only every ``config.log_every`` steps.

    Args:
        objective: MAP or DE-ELBo objective wrapping the model (already on ``config.device``).
        x: inputs ``(N, ...)``; y: integer labels ``(N,)``. Moved to the device once.
        config: optimiser and loop settings.
        val: optional held-out ``(x, y)``; its NLL is reported to ``trial`` every
            ``eval_every`` steps (MAP tuning). Without it the running training loss is reported.
        trial: optional Optuna trial for ``report``/``should_prune``.
        transform: applied to each training minibatch on the device (e.g. uint8 -> normalised
            float with random crop and flip); ``eval_transform`` likewise for validation.
        on_step: called with the step number after every optimiser step (e.g. SWAG collection).
        mixing: ``(x, y) -> (x, soft targets (B, K))`` after ``transform`` (mixup, cutmix,
            cutout, label smoothing: :class:`~optuna_deelbo.regularizers.BatchMixing`).
        weight_decay_schedule: sets the MAP objective's ``weight_decay`` every step (pull-down /
            pull-up :class:`~optuna_deelbo.train.StepSchedule`) or every ``every`` steps from
            train vs validation accuracy (:class:`~optuna_deelbo.train.AdaptiveFeedback`,
            needs ``val``; train accuracy on up to 1,024 fixed training examples). The value
            used is logged as ``weight_decay`` in every history row.
        checkpoint: ``save(state)`` after every ``every``-th step but the last: weights, sigma,
            optimizer, scheduler, RNGs, minibatch order, logs (see :class:`optuna_deelbo.train.CheckpointHook`).
        resume: a state from ``checkpoint`` (same objective, data and ``config``): training
            continues after its step and ends with the weights and losses of an uninterrupted
            run (bit for bit on CPU; CUDA kernels may be nondeterministic). ``weight_decay_schedule``
            and the objective must be freshly built, as for a new run.

    Raises:
        ConfigError: empty or mismatched data.
        CheckpointError: ``resume`` belongs to another run (objective, size, data or settings differ).
        TrainingDiverged: a non-finite logged value (loss, NLL, lambda, tau, sigma...), an exploding
            sigma or a diverging NLL (``config.divergence``; checked every ``log_every`` steps).
        optuna.TrialPruned: the trial's pruner stopped it.
    """
    _check_extras(objective, config, val, weight_decay_schedule)
    loop = LoopState.start(objective, x, y, config, fingerprinted=checkpoint is not None or resume is not None)
    if val is not None:
        val = (val[0].to(loop.device), val[1].to(loop.device))
    hooks: list[TrainHook] = [StepCallback(on_step)] if on_step is not None else []
    if weight_decay_schedule is not None:
        assert isinstance(objective, MAPObjective)  # _check_extras
        hooks.append(WeightDecayControl(loop, objective, weight_decay_schedule, val, eval_transform))
    hooks += [DivergenceCheck(loop), Evaluation(loop, trial, val, eval_transform)]
    if checkpoint is not None:
        hooks.append(CheckpointWriter(loop, checkpoint, list(hooks)))
    if resume is not None:
        loop.restore(resume)
        for hook in hooks:
            hook.restore(resume)
    hooks.append(ProgressBar(loop, desc))
    loop.started = time.perf_counter()
    try:
        for step in range(loop.first_step, config.steps + 1):
            raise_pending_interrupt()  # one a finalizer swallowed (optuna_deelbo._interrupts)
            for hook in hooks:
                hook.before_forward(step)
            logged = loop.logged(loop.step(transform, mixing))
            for hook in hooks:
                hook.after_step(step, logged)
            loop.accumulate(logged)
            if loop.is_log_step(step):
                row = loop.log_row(step)
                for hook in hooks:
                    hook.on_log(step, row)
                loop.result.history.append(row)
            loop.result.stopped_step = step
            if any(hook.end_of_step(step) for hook in hooks):  # a stop skips the hooks after it
                break
    finally:
        for hook in hooks:
            hook.close()
    for hook in hooks:
        hook.finish()
    return loop.finish()
