"""What one training run owns: data on the device, optimisers and schedule, minibatch order, running sums.

:class:`LoopState` does one optimiser step at a time (:meth:`LoopState.step`), keeps the
running sums the log rows average, and turns all of it into a checkpoint (:meth:`snapshot`) and
back (:meth:`restore`). The loop itself (:func:`optuna_deelbo.train.train_model`) only orders these
calls and the hooks' (:mod:`optuna_deelbo.train._hooks`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import CheckpointError, ConfigError, TrainingDiverged
from optuna_deelbo.bayes._deelbo_recipe import PRODIGY_SIGMA
from optuna_deelbo.bayes._objectives import LossRecord, Objective
from optuna_deelbo.train._checkpoint import check_fingerprint, copy_tensors, rng_state, set_rng_state
from optuna_deelbo.train._minibatches import Minibatches
from optuna_deelbo.train._types import TrainConfig, TrainResult, resolve_device, run_fingerprint

__all__ = ["LoopState"]

Batch = Callable[[Tensor], Tensor]
Mixing = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _optimizers(
    objective: Objective, config: TrainConfig
) -> tuple[
    torch.optim.Optimizer, torch.optim.Optimizer | None, torch.optim.lr_scheduler.LRScheduler | None, list[Tensor]
]:
    """The weights' optimiser (with sigma's rho unless it has its own Adam), its cosine schedule, trained tensors."""
    weights = [p for p in objective.model.parameters() if p.requires_grad]
    extra = list(objective.extra_parameters())
    if extra and config.weight_optimizer == "prodigy" and config.sigma_optimizer != "adam":
        raise ConfigError(
            f"weight_optimizer='prodigy' with the posterior std in it: {PRODIGY_SIGMA}. "
            "Pass sigma_optimizer='adam' and a sigma_lr (e.g. 0.05)"
        )
    groups: list[dict[str, Any]] = [{"params": weights}]
    sigma_optimizer: torch.optim.Optimizer | None = None
    if extra and config.sigma_optimizer == "adam":
        assert config.sigma_lr is not None  # TrainConfig.__post_init__
        sigma_optimizer = torch.optim.Adam(extra, lr=config.sigma_lr)
    elif extra:
        groups.append({"params": extra, "lr": config.sigma_lr or config.lr})
    optimizer = _weight_optimizer(groups, config)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.cosine and config.restart_period is not None:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.restart_period, T_mult=2)
    elif config.cosine:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    params: list[Tensor] = [*weights, *extra]
    return optimizer, sigma_optimizer, scheduler, params


def _weight_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the config's momentum, or Prodigy (``weight_optimizer="prodigy"``) at multiplier ``config.lr``."""
    if config.weight_optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ConfigError(
                "weight_optimizer='prodigy' needs the prodigyopt package: pip install 'optuna-deelbo[lrfree]'"
            ) from None
        # the package's defaults but weight decay 0: the objective holds the penalty (MAP) or the KL (DE-ELBo)
        optimizer: torch.optim.Optimizer = Prodigy(groups, lr=config.lr, weight_decay=0.0)
        return optimizer
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


@dataclass
class LoopState:
    """One run's state (see the module docstring); build it with :meth:`start`.

    Attributes:
        objective, config, device, amp: what trains, how, where (bf16 autocast or not).
        x, y: the training data on the device. channels_last: NHWC batches.
        result: the log being written (history rows, validation rows, steps, seconds).
        first_step: 1, or the step after a resumed checkpoint's.
    """

    objective: Objective
    config: TrainConfig
    device: torch.device
    amp: bool
    channels_last: bool
    x: Tensor
    y: Tensor
    optimizer: torch.optim.Optimizer
    sigma_optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    params: list[Tensor]
    batches: Minibatches
    tail: deque[tuple[Tensor, Tensor]]
    fingerprint: dict[str, Any]
    result: TrainResult = field(default_factory=lambda: TrainResult(final_loss=math.nan, final_nll=math.nan))
    sums: dict[str, Tensor] = field(default_factory=dict)
    since_log: int = 0
    first_step: int = 1
    started: float = 0.0

    @classmethod
    def start(
        cls, objective: Objective, x: Tensor, y: Tensor, config: TrainConfig, *, fingerprinted: bool
    ) -> LoopState:
        """Check the data, pick the device, convert / compile the model, move the data, build the optimisers."""
        n = int(x.shape[0])
        if n == 0:
            raise ConfigError("training set is empty (N = 0)")
        if y.shape != (n,):
            raise ConfigError(f"labels must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
        if y.dtype != torch.int64:
            raise ConfigError(f"labels y must be int64 class indices, got {y.dtype}")
        device = resolve_device(config.device)
        amp = device.type == "cuda" if config.amp is None else config.amp
        channels_last = (
            device.type == "cuda" if config.channels_last is None else config.channels_last
        ) and x.ndim == 4
        if channels_last:
            objective.model.to(memory_format=torch.channels_last)
        if config.compile and getattr(objective.model, "_compiled_call_impl", None) is None:
            objective.model.compile()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        torch.manual_seed(config.seed)
        optimizer, sigma_optimizer, scheduler, params = _optimizers(objective, config)
        batches = Minibatches(n, config.batch_size, seed=config.seed, device=device)
        objective.train()
        return cls(
            objective=objective,
            config=config,
            device=device,
            amp=amp,
            channels_last=channels_last,
            x=x,
            y=y,
            optimizer=optimizer,
            sigma_optimizer=sigma_optimizer,
            scheduler=scheduler,
            params=params,
            batches=batches,
            tail=deque(maxlen=min(batches.per_epoch, config.steps)),  # the last epoch's (loss, nll)
            fingerprint=run_fingerprint(objective, config, n) if fingerprinted else {},
        )

    def step(self, transform: Batch | None, mixing: Mixing | None) -> LossRecord:
        """Draw the next minibatch, augment / mix it, and take one optimiser step; returns the objective's record."""
        xb, yb = self.next_batch(transform, mixing)
        record = self.objective(xb, yb, amp=self.amp)
        self.zero_grad()
        record.loss.backward()
        self.apply_gradients()
        return record

    def next_batch(self, transform: Batch | None, mixing: Mixing | None) -> tuple[Tensor, Tensor]:
        """The next minibatch ``(x (B, ...), y (B,) or soft targets (B, K))``: augmented, mixed, laid out."""
        idx = self.batches.next()
        xb = self.x[idx] if transform is None else transform(self.x[idx])
        yb: Tensor = self.y[idx]
        if mixing is not None:
            xb, yb = mixing(xb, yb)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb

    def zero_grad(self) -> None:
        """Clear the gradients of every trained tensor (weights and sigma)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.sigma_optimizer is not None:
            self.sigma_optimizer.zero_grad(set_to_none=True)

    def apply_gradients(self) -> None:
        """Clip the gradient norm (``config.clip_norm``), step the optimisers and the schedule."""
        if self.config.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        if self.sigma_optimizer is not None:
            self.sigma_optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    @staticmethod
    def logged(record: LossRecord) -> dict[str, Tensor]:
        """The step's values for the log (device tensors, not synchronised): loss, nll, penalty, lambda, tau."""
        values = {"loss": record.loss.detach(), "nll": record.nll.detach(), "penalty": record.penalty.detach()}
        if record.lam is not None:
            values["lambda"] = record.lam
        if record.tau is not None:
            values["tau"] = record.tau
        return values

    def accumulate(self, values: Mapping[str, Tensor]) -> None:
        """Add a step's values to the running sums and its (loss, nll) to the last epoch's."""
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.since_log += 1
        self.tail.append((values["loss"], values["nll"]))

    def is_log_step(self, step: int) -> bool:
        return step % self.config.log_every == 0 or step == self.config.steps

    def log_row(self, step: int) -> dict[str, float]:
        """Means since the last row (one host synchronisation), the learning rate and the mean sigma."""
        row = {"step": float(step), "lr": self.optimizer.param_groups[0]["lr"]}
        for key, value in self.sums.items():
            row[key] = float(value) / self.since_log
        posterior = self.objective.weight_posterior()
        if posterior is not None:
            row["sigma"] = posterior.mean_sigma()
        self.sums, self.since_log = {}, 0
        return row

    def epoch_loss(self) -> float:
        """The mean training objective over the last epoch's steps (one host synchronisation); nan before a step."""
        if not self.tail:
            return math.nan
        return float(torch.stack([loss for loss, _ in self.tail]).mean())

    def rung_loss(self) -> float:
        """The loss successive halving ranks a run by mid-training: the last epoch's mean (:meth:`epoch_loss`), or
        the last log row's mean when an epoch is shorter than ``log_every`` steps (one minibatch is too noisy)."""
        if len(self.tail) < self.config.log_every and self.result.history:
            return self.result.history[-1]["loss"]
        return self.epoch_loss()

    def running_loss(self, fallback: Tensor) -> float:
        """The last log row's loss (the step's own before the first row)."""
        return self.result.history[-1]["loss"] if self.result.history else float(fallback)

    def snapshot(self, step: int, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Everything a resumed run needs (CPU copies), plus the hooks' ``extra`` state."""
        cpu = torch.device("cpu")
        batches = self.batches.state_dict()
        return {
            "fingerprint": self.fingerprint,
            "step": step,
            "objective": copy_tensors(self.objective.state_dict(), cpu),
            "optimizer": self.optimizer.state_dict(),
            "sigma_optimizer": self.sigma_optimizer.state_dict() if self.sigma_optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": {**rng_state(self.device), "perm": batches["perm"]},
            "order": batches["order"],
            "cursor": batches["cursor"],
            "tail": [(loss.to(cpu), nll.to(cpu)) for loss, nll in self.tail],
            "sums": {k: v.to(cpu) for k, v in self.sums.items()},
            "since_log": self.since_log,
            "history": [dict(row) for row in self.result.history],
            "val_history": [list(row) for row in self.result.val_history],
            **extra,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`snapshot`'s state (same objective, data and settings, else :class:`CheckpointError`)."""
        check_fingerprint(state, self.fingerprint)
        device = self.device
        try:
            self.objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.sigma_optimizer is not None:
                self.sigma_optimizer.load_state_dict(state["sigma_optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], device)
            self.batches.load_state_dict(
                {"perm": state["rng"]["perm"], "order": state["order"], "cursor": state["cursor"]}
            )
            self.tail.extend((loss.to(device), nll.to(device)) for loss, nll in state["tail"])
            self.sums = {k: v.to(device) for k, v in state["sums"].items()}
            self.since_log = int(state["since_log"])
            self.result.history = [dict(row) for row in state["history"]]
            self.result.val_history = [(int(s), float(v), float(a)) for s, v, a in state["val_history"]]
            self.first_step = int(state["step"]) + 1
            self.result.stopped_step = self.first_step - 1
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint does not fit this run: {type(exc).__name__}: {exc}") from exc

    def finish(self) -> TrainResult:
        """Wait for the device, stamp the seconds, average the last epoch; a non-finite loss is a divergence."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result = self.result
        result.seconds = time.perf_counter() - self.started
        result.final_loss = self.epoch_loss()
        result.final_nll = float(torch.stack([nll for _, nll in self.tail]).mean())
        if not math.isfinite(result.final_loss):
            raise TrainingDiverged(f"non-finite final loss (lr={self.config.lr:g})")
        return result
