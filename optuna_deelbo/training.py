"""The one training loop, shared by every strategy (MAP or DE-ELBo, tuning or retraining).

It knows nothing about which strategy calls it: it minimises an :class:`Objective` with SGD
(Nesterov momentum 0.9 and a cosine learning-rate decay by default), clips the gradient norm,
keeps the data on the device, uses bf16 autocast on CUDA, draws a tqdm progress bar, and,
given an Optuna trial, reports intermediate values and honours pruning. With a
:class:`~optuna_deelbo.checkpoint.CheckpointHook` it hands its whole state over every ``every``
steps, and ``resume=`` continues from such a state to the same final weights and losses.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from optuna_deelbo._errors import CheckpointError, ConfigError, TrainingDiverged
from optuna_deelbo._validation import positive_finite, positive_int
from optuna_deelbo.checkpoint import CheckpointHook, check_fingerprint, copy_tensors, rng_state, set_rng_state
from optuna_deelbo.deelbo_recipe import SIGMA_OPTIMIZERS
from optuna_deelbo.divergence import DivergenceMonitor, DivergenceRule
from optuna_deelbo.early_stopping import EarlyStopping
from optuna_deelbo.minibatches import Minibatches
from optuna_deelbo.objectives import MAPObjective, Objective
from optuna_deelbo.schedules import AdaptiveFeedback, StepSchedule

__all__ = ["Metrics", "TrainConfig", "TrainResult", "evaluate", "resolve_device", "run_fingerprint", "train"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when present, else CPU; otherwise the named device (checked)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings.

    Attributes:
        lr: initial learning rate (> 0).
        steps: number of optimiser steps (> 0).
        batch_size: examples per step (> 0); capped at N.
        momentum: SGD momentum in [0, 1).
        nesterov: Nesterov momentum (needs momentum > 0).
        cosine: cosine-decay the learning rate to 0 over ``steps``.
        restart_period: with ``cosine``, restart the cosine every ``restart_period`` steps
            (SGDR, Loshchilov & Hutter 2017; period doubles after each restart); ``None`` = one cycle.
        patience: early stopping: stop when the validation NLL has not improved for
            ``patience`` evaluations (every ``eval_every`` steps) and restore the best weights;
            needs ``val``. ``None`` = train all ``steps``.
        clip_norm: max global gradient norm, or ``None`` for no clipping.
        sigma_optimizer: how the objective's extra parameters (the posterior's ``rho``) train:
            ``"sgd"`` in the weights' SGD with learning rate ``sigma_lr`` (``None`` = ``lr``,
            cosine-decayed with it), or ``"adam"``: their own Adam at a constant ``sigma_lr``.
        sigma_lr: see ``sigma_optimizer``.
        log_every: steps between host synchronisations (history rows, bar, finiteness check).
        eval_every: steps between validation passes / ``trial.report`` calls.
        device: ``None`` picks CUDA when present, else CPU.
        amp: bf16 autocast; ``None`` means on for CUDA, off for CPU.
        channels_last: NHWC memory format for the model and 4-d image batches (faster
            convolutions on tensor cores); ``None`` means on for CUDA, off for CPU.
        compile: ``torch.compile`` the model's forward (in place, once per model; the first
            steps pay the compile time, minutes for large backbones).
        progress: show a tqdm progress bar.
        seed: seeds minibatch order and posterior samples.
        divergence: when the run ends as diverged (:class:`TrainingDiverged`), checked every
            ``log_every`` steps: any non-finite logged value; the largest posterior std above
            ``max_sigma`` (default 100 weight units); the running training NLL above
            ``nll_factor`` (default 10) x the first step's NLL (at least 0.1 nats) for
            ``patience`` (default 3) checks in a row. See :class:`DivergenceRule`.
    """

    lr: float
    steps: int = 300
    batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    cosine: bool = True
    restart_period: int | None = None
    patience: int | None = None
    clip_norm: float | None = 10.0
    sigma_optimizer: str = "sgd"
    sigma_lr: float | None = None
    log_every: int = 10
    eval_every: int = 50
    device: str | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    progress: bool = True
    seed: int = 0
    divergence: DivergenceRule = field(default_factory=DivergenceRule)

    def __post_init__(self) -> None:
        positive_finite(self.lr, "learning rate")
        for name in ("steps", "batch_size", "log_every", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            positive_int(value, name)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0")
        for name in ("restart_period", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if self.restart_period is not None and not self.cosine:
            raise ConfigError("restart_period needs cosine=True (warm restarts of the cosine schedule)")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if self.sigma_optimizer not in SIGMA_OPTIMIZERS:
            raise ConfigError(f"unknown sigma_optimizer {self.sigma_optimizer!r}; choose one of {SIGMA_OPTIMIZERS}")
        if self.sigma_lr is not None:
            positive_finite(self.sigma_lr, "sigma_lr")
        elif self.sigma_optimizer == "adam":
            raise ConfigError("sigma_optimizer='adam' needs a sigma_lr")
        if not isinstance(self.divergence, DivergenceRule):
            raise ConfigError(f"divergence must be a DivergenceRule, got {type(self.divergence).__name__}")


@dataclass(frozen=True)
class Metrics:
    """Mean NLL (nats per example) and accuracy (fraction) on a data set."""

    nll: float
    accuracy: float


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        final_loss: mean objective over the last epoch's steps (nats per example).
        final_nll: mean training NLL over the same steps.
        history: one row every ``log_every`` steps: step, loss, nll, penalty, lr and, for
            the DE-ELBo, lambda, tau and sigma.
        val_history: ``(step, val_nll, val_accuracy)`` at every ``eval_every`` step.
        seconds: wall-clock of the loop (s).
        best_step: with early stopping, the step whose weights were kept (else ``None``).
        stopped_step: the last step run (``steps`` unless early stopping ended sooner).
        train_loss_at_best: running training loss at ``best_step`` (for retraining rule 7.3).
    """

    final_loss: float
    final_nll: float
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[tuple[int, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    best_step: int | None = None
    stopped_step: int = 0
    train_loss_at_best: float | None = None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1024,
    amp: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Metrics:
    """NLL and accuracy of ``model`` (mean weights, eval mode) on ``(x, y)``, moved to its device."""
    if x.shape[0] == 0:
        raise ConfigError("cannot evaluate on an empty data set")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    nll_sum = x.new_zeros((), dtype=torch.float64)
    correct = x.new_zeros((), dtype=torch.int64)
    try:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            if transform is not None:
                xb = transform(xb)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            logits = logits.float()
            nll_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=-1) == yb).sum()
    finally:
        model.train(was_training)
    n = x.shape[0]
    return Metrics(nll=float(nll_sum) / n, accuracy=float(correct) / n)


def _row(step: int, lr: float, record_sums: dict[str, Tensor], count: int) -> dict[str, float]:
    row = {"step": float(step), "lr": lr}
    for key, value in record_sums.items():
        row[key] = float(value) / count
    return row


def run_fingerprint(objective: Objective, config: TrainConfig, n: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: objective, model size, data size and the run's settings."""
    params = sum(p.numel() for p in objective.model.parameters()) + sum(p.numel() for p in objective.extra_parameters())
    return {
        "objective": objective.name,
        "weights": int(params),
        "n": int(n),
        "lr": float(config.lr),
        "steps": int(config.steps),
        "batch_size": int(config.batch_size),
        "seed": int(config.seed),
        "momentum": float(config.momentum),
        "cosine": bool(config.cosine),
        "restart_period": config.restart_period,
        "patience": config.patience,
        "sigma_optimizer": config.sigma_optimizer,
        "sigma_lr": config.sigma_lr,
    }


def train(
    objective: Objective,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    val: tuple[Tensor, Tensor] | None = None,
    trial: optuna.trial.Trial | None = None,
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
            cutout, label smoothing: :class:`~optuna_deelbo.mixing.BatchMixing`).
        weight_decay_schedule: sets the MAP objective's ``weight_decay`` every step (pull-down /
            pull-up :class:`~optuna_deelbo.schedules.StepSchedule`) or every ``every`` steps from
            train vs validation accuracy (:class:`~optuna_deelbo.schedules.AdaptiveFeedback`,
            needs ``val``; train accuracy on up to 1,024 fixed training examples). The value
            used is logged as ``weight_decay`` in every history row.
        checkpoint: ``save(state)`` after every ``every``-th step but the last: weights, sigma,
            optimizer, scheduler, RNGs, minibatch order, logs (see :mod:`optuna_deelbo.checkpoint`).
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
    n = int(x.shape[0])
    if n == 0:
        raise ConfigError("training set is empty (N = 0)")
    if y.shape != (n,):
        raise ConfigError(f"labels must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if y.dtype != torch.int64:
        raise ConfigError(f"labels y must be int64 class indices, got {y.dtype}")
    device = resolve_device(config.device)
    amp = device.type == "cuda" if config.amp is None else config.amp
    channels_last = (device.type == "cuda" if config.channels_last is None else config.channels_last) and x.ndim == 4
    if channels_last:
        objective.model.to(memory_format=torch.channels_last)
    if config.compile and getattr(objective.model, "_compiled_call_impl", None) is None:
        objective.model.compile()
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    if config.patience is not None and val is None:
        raise ConfigError("early stopping (patience) needs a validation set")
    scheduled = objective if isinstance(objective, MAPObjective) else None
    if weight_decay_schedule is not None and scheduled is None:
        raise ConfigError(f"a weight-decay schedule needs a MAP objective, got {type(objective).__name__}")
    if isinstance(weight_decay_schedule, AdaptiveFeedback) and val is None:
        raise ConfigError("the adaptive weight-decay rule compares train and validation accuracy: pass val")
    torch.manual_seed(config.seed)
    stopper = EarlyStopping(config.patience) if config.patience is not None else None
    monitor = DivergenceMonitor(config.divergence, config.lr)
    best_state: dict[str, Any] | None = None
    probe = x[: min(n, 1024)], y[: min(n, 1024)]  # fixed training examples for the adaptive rule

    weights = [p for p in objective.model.parameters() if p.requires_grad]
    extra = list(objective.extra_parameters())
    params = weights + extra
    param_groups: list[dict[str, Any]] = [{"params": weights}]
    sigma_optimizer: torch.optim.Optimizer | None = None
    if extra and config.sigma_optimizer == "adam":
        assert config.sigma_lr is not None  # TrainConfig.__post_init__
        sigma_optimizer = torch.optim.Adam(extra, lr=config.sigma_lr)
    elif extra:
        param_groups.append({"params": extra, "lr": config.sigma_lr or config.lr})
    optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.cosine and config.restart_period is not None:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.restart_period, T_mult=2)
    elif config.cosine:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)

    batches = Minibatches(n, config.batch_size, seed=config.seed, device=device)
    tail: deque[tuple[Tensor, Tensor]] = deque(maxlen=min(batches.per_epoch, config.steps))  # last epoch's (loss, nll)
    sums: dict[str, Tensor] = {}
    since_log = 0
    result = TrainResult(final_loss=math.nan, final_nll=math.nan)
    objective.train()
    first_step = 1
    fingerprint = run_fingerprint(objective, config, n) if checkpoint is not None or resume is not None else {}

    def snapshot(step: int) -> dict[str, Any]:
        cpu = torch.device("cpu")
        batch_state = batches.state_dict()
        return {
            "fingerprint": fingerprint,
            "step": step,
            "objective": copy_tensors(objective.state_dict(), cpu),
            "optimizer": optimizer.state_dict(),
            "sigma_optimizer": sigma_optimizer.state_dict() if sigma_optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": {**rng_state(device), "perm": batch_state["perm"]},
            "order": batch_state["order"],
            "cursor": batch_state["cursor"],
            "tail": [(loss.to(cpu), nll.to(cpu)) for loss, nll in tail],
            "sums": {k: v.to(cpu) for k, v in sums.items()},
            "since_log": since_log,
            "history": [dict(row) for row in result.history],
            "val_history": [list(row) for row in result.val_history],
            "stopper": stopper.state_dict() if stopper is not None else None,
            "best_state": copy_tensors(best_state, cpu) if best_state is not None else None,
            "schedule": weight_decay_schedule.state_dict()
            if isinstance(weight_decay_schedule, AdaptiveFeedback)
            else None,
        }

    if resume is not None:
        check_fingerprint(resume, fingerprint)
        try:
            objective.load_state_dict(resume["objective"])
            optimizer.load_state_dict(resume["optimizer"])
            if sigma_optimizer is not None:
                sigma_optimizer.load_state_dict(resume["sigma_optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(resume["scheduler"])
            set_rng_state(resume["rng"], device)
            batches.load_state_dict(
                {"perm": resume["rng"]["perm"], "order": resume["order"], "cursor": resume["cursor"]}
            )
            tail.extend((loss.to(device), nll.to(device)) for loss, nll in resume["tail"])
            sums = {k: v.to(device) for k, v in resume["sums"].items()}
            since_log = int(resume["since_log"])
            result.history = [dict(row) for row in resume["history"]]
            result.val_history = [(int(s), float(v), float(a)) for s, v, a in resume["val_history"]]
            if stopper is not None and resume["stopper"] is not None:
                stopper.load_state_dict(resume["stopper"])
            if resume["best_state"] is not None:
                best_state = copy_tensors(resume["best_state"], device)
            if isinstance(weight_decay_schedule, AdaptiveFeedback) and resume["schedule"] is not None:
                weight_decay_schedule.load_state_dict(resume["schedule"])
            first_step = int(resume["step"]) + 1
            result.stopped_step = first_step - 1
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint does not fit this run: {type(exc).__name__}: {exc}") from exc

    start_time = time.perf_counter()
    bar = tqdm(
        total=config.steps,
        initial=first_step - 1,
        desc=desc,
        disable=not config.progress,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for step in range(first_step, config.steps + 1):
            idx = batches.next()
            xb = x[idx] if transform is None else transform(x[idx])
            yb: Tensor = y[idx]
            if mixing is not None:
                xb, yb = mixing(xb, yb)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            if scheduled is not None and isinstance(weight_decay_schedule, StepSchedule):
                scheduled.weight_decay = weight_decay_schedule.value_at(step)
            elif scheduled is not None and isinstance(weight_decay_schedule, AdaptiveFeedback):
                scheduled.weight_decay = weight_decay_schedule.value
            record = objective(xb, yb, amp=amp)
            optimizer.zero_grad(set_to_none=True)
            if sigma_optimizer is not None:
                sigma_optimizer.zero_grad(set_to_none=True)
            record.loss.backward()
            if config.clip_norm is not None:
                nn.utils.clip_grad_norm_(params, config.clip_norm)
            optimizer.step()
            if sigma_optimizer is not None:
                sigma_optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if on_step is not None:
                on_step(step)

            detached = {"loss": record.loss.detach(), "nll": record.nll.detach(), "penalty": record.penalty.detach()}
            if record.lam is not None:
                detached["lambda"] = record.lam
            if record.tau is not None:
                detached["tau"] = record.tau
            if scheduled is not None and weight_decay_schedule is not None:
                detached["weight_decay"] = torch.tensor(scheduled.weight_decay)
            for key, value in detached.items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            since_log += 1
            tail.append((detached["loss"], detached["nll"]))
            monitor.start(detached["nll"])  # keeps the first NLL it sees (read at the next check)

            if step % config.log_every == 0 or step == config.steps:
                row = _row(step, optimizer.param_groups[0]["lr"], sums, since_log)
                sigma = getattr(getattr(objective, "posterior", None), "mean_sigma", None)
                if sigma is not None:
                    row["sigma"] = sigma()
                monitor.check(step, row, getattr(objective, "posterior", None))
                result.history.append(row)
                bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "lambda") if k in row}, refresh=False)
                sums, since_log = {}, 0

            result.stopped_step = step
            if isinstance(weight_decay_schedule, AdaptiveFeedback) and step % weight_decay_schedule.every == 0:
                assert val is not None
                train_acc = evaluate(objective.model, *probe, amp=amp, transform=eval_transform).accuracy
                val_acc = evaluate(objective.model, val[0], val[1], amp=amp, transform=eval_transform).accuracy
                weight_decay_schedule.update(step, train_acc, val_acc)

            at_eval = step % config.eval_every == 0 or step == config.steps
            if at_eval and (trial is not None or stopper is not None):
                if val is not None:
                    metrics = evaluate(objective.model, val[0], val[1], amp=amp, transform=eval_transform)
                    result.val_history.append((step, metrics.nll, metrics.accuracy))
                    value = metrics.nll
                else:
                    value = result.history[-1]["loss"] if result.history else float(detached["loss"])
                if trial is not None:
                    trial.report(value, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at step {step} with intermediate value {value:.4g}")
                if stopper is not None:
                    running = result.history[-1]["loss"] if result.history else float(detached["loss"])
                    stop = stopper.update(step, value, running)
                    if stopper.best_step == step:
                        best_state = copy_tensors(objective.state_dict(), device)
                    if stop:
                        bar.update(1)
                        break
            if checkpoint is not None and step % checkpoint.every == 0 and step < config.steps:
                checkpoint.save(snapshot(step))
            bar.update(1)
    finally:
        bar.close()
    if stopper is not None and best_state is not None:
        objective.load_state_dict(best_state)
        result.best_step, result.train_loss_at_best = stopper.best_step, stopper.train_loss_at_best
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start_time
    result.final_loss = float(torch.stack([loss for loss, _ in tail]).mean())
    result.final_nll = float(torch.stack([nll for _, nll in tail]).mean())
    if not math.isfinite(result.final_loss):
        raise TrainingDiverged(f"non-finite final loss (lr={config.lr:g})")
    return result
