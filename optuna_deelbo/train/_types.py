"""The training loop's vocabulary: settings, results, evaluation, device choice and run fingerprint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from optuna_deelbo._batches import count_examples, labelled_batches
from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import check_seed, learning_rate, positive_finite, positive_int, shown
from optuna_deelbo.bayes._deelbo_recipe import SIGMA_OPTIMIZERS, WEIGHT_OPTIMIZERS
from optuna_deelbo.bayes._objectives import Objective
from optuna_deelbo.train._divergence import DivergenceRule

__all__ = [
    "WEIGHT_OPTIMIZERS",
    "Metrics",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "resolve_device",
    "run_fingerprint",
]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when present, else CPU; otherwise the named device (checked)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {shown(device)}: {str(exc)[:200]}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {shown(device)} asked for, but CUDA is not available on this machine")
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
        weight_optimizer: one of :data:`WEIGHT_OPTIMIZERS`: ``"sgd"`` (momentum, Nesterov), or
            ``"prodigy"``, the learning-rate-free Adam of Mishchenko & Defazio (2024; package
            ``prodigyopt``, extra ``[lrfree]``): ``lr`` is then its multiplier of the learned step
            size (1.0 as recommended), cosine-decayed like SGD's; momentum and Nesterov are SGD's only.
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
    weight_optimizer: str = "sgd"
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
        learning_rate(self.lr, "learning rate (lr)")
        check_seed(self.seed, "seed")
        for name in ("steps", "batch_size", "log_every", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            positive_int(value, name)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {shown(self.momentum)}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0")
        if self.weight_optimizer not in WEIGHT_OPTIMIZERS:
            raise ConfigError(
                f"unknown weight_optimizer {shown(self.weight_optimizer)}; choose one of {WEIGHT_OPTIMIZERS}"
            )
        for name in ("restart_period", "patience"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, int):
                raise ConfigError(f"{name} must be a positive integer or None, got {shown(value)}")
            if value is not None:
                positive_int(value, f"{name} (or None)")
        if self.restart_period is not None and not self.cosine:
            raise ConfigError("restart_period needs cosine=True (warm restarts of the cosine schedule)")
        if self.clip_norm is not None:
            positive_finite(self.clip_norm, "clip_norm (None: no clipping)")
        if self.sigma_optimizer not in SIGMA_OPTIMIZERS:
            raise ConfigError(f"unknown sigma_optimizer {self.sigma_optimizer!r}; choose one of {SIGMA_OPTIMIZERS}")
        if self.sigma_lr is not None:
            learning_rate(self.sigma_lr, "sigma_lr")
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
        recalibrate_s: of ``seconds``, the BatchNorm recalibration after training (DE-ELBo runs; s).
        best_step: with early stopping, the step whose weights were kept (else ``None``).
        stopped_step: the last step run (``steps`` unless early stopping ended sooner).
        train_loss_at_best: running training loss at ``best_step`` (for retraining rule 7.3).
    """

    final_loss: float
    final_nll: float
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[tuple[int, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    recalibrate_s: float = 0.0
    best_step: int | None = None
    stopped_step: int = 0
    train_loss_at_best: float | None = None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: object,
    y: Tensor | None = None,
    batch_size: int = 1024,
    amp: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Metrics:
    """NLL (nats per example) and accuracy of ``model`` (mean weights, eval mode), batch by batch on its device.

    Args:
        x: inputs ``(N, ...)`` with labels ``y`` ``(N,)``; or, with ``y=None``, the data in any
            form: ``(x, y)``, an ``od.Split``, a ``Dataset`` of ``(input, label)`` items or a
            ``DataLoader`` (read as it gives its batches).
    """
    data = x if y is None else (x, y)
    n = count_examples(data)
    if n == 0:
        raise ConfigError("cannot evaluate on an empty data set")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    try:
        for xb, yb in labelled_batches(data, batch_size):
            xb, yb = xb.to(device), yb.to(device)
            seen += int(yb.shape[0])
            if transform is not None:
                xb = transform(xb)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            logits = logits.float()
            nll_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=-1) == yb).sum()
    finally:
        model.train(was_training)
    return Metrics(nll=float(nll_sum) / seen, accuracy=float(correct) / seen)


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
    } | ({"weight_optimizer": config.weight_optimizer} if config.weight_optimizer != "sgd" else {})
