"""Source pretraining: train a model on the source task by MAP, optionally collecting SWAG moments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import MAX_COUNT, check_seed, positive_int, shown
from optuna_deelbo.bayes._objectives import MAPObjective
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import IsotropicGaussian
from optuna_deelbo.bayes._swag import SWAGCollector, SWAGMoments
from optuna_deelbo.data._splits import Split
from optuna_deelbo.train._training import TrainConfig, TrainResult, resolve_device, train_model

__all__ = ["Pretrained", "pretrain"]


@dataclass
class Pretrained:
    """A source-task model, its training log and (optionally) SWAG moments of its body."""

    model: nn.Module
    result: TrainResult
    swag: SWAGMoments | None = None


def pretrain(
    model: nn.Module,
    source: Split,
    *,
    steps: int = 400,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
    head_prefixes: tuple[str, ...] = ("head.",),
    transform: Callable[[Tensor], Tensor] | None = None,
    swag_rank: int = 0,
    swag_start: float = 0.5,
    swag_every: int | None = None,
    progress: bool = False,
) -> Pretrained:
    """Train ``model`` in place on the source task with MAP (L2-zero, SGD + cosine).

    With ``swag_rank > 0`` the body weights (everything outside ``head_prefixes``) are
    snapshotted every ``swag_every`` steps (default: spaced to give ``swag_rank``
    snapshots) once a ``swag_start`` fraction of the steps has run, and the SWAG moments
    (mean, diagonal variance, ``swag_rank`` deviation columns) are returned for PTYL.
    """
    positive_int(steps, "steps (pretraining)")
    check_seed(seed)
    if isinstance(swag_rank, bool) or not isinstance(swag_rank, int) or not 0 <= swag_rank <= MAX_COUNT:
        raise ConfigError(f"swag_rank must be an integer >= 0, got {shown(swag_rank)}")
    if not 0 <= swag_start < 1:
        raise ConfigError(f"swag_start must be a fraction in [0, 1), got {shown(swag_start)}")
    first = int(swag_start * steps) + 1
    every = max(1, (steps - first + 1) // max(swag_rank, 1)) if swag_every is None else swag_every
    positive_int(every, "swag_every")
    if swag_rank > 0 and (steps - first) // every + 1 < 2:
        raise ConfigError(f"SWAG needs >= 2 snapshots; {steps} steps with swag_start={swag_start} give fewer")
    torch.manual_seed(seed)
    model.to(resolve_device(device))
    config = TrainConfig(lr=lr, steps=steps, batch_size=batch_size, device=device, progress=progress, seed=seed)
    groups = ParameterGroups.split(model)
    body = ParameterGroups.split(model, head_prefixes)
    prior = IsotropicGaussian.zero(groups.numel(model, "body"))
    collector: SWAGCollector | None = None
    on_step: Callable[[int], None] | None = None
    if swag_rank > 0:
        ref = next(model.parameters())
        collector = SWAGCollector(body.numel(model, "body"), max_rank=swag_rank, device=ref.device)

        def on_step(step: int) -> None:
            if step >= first and (step - first) % every == 0:
                assert collector is not None
                collector.collect_module(model, body)

    result = train_model(
        MAPObjective(model, groups, prior, weight_decay),
        source.x,
        source.y,
        config,
        desc="pretrain",
        transform=transform,
        on_step=on_step,
    )
    swag = collector.moments() if collector is not None else None
    return Pretrained(model=model, result=result, swag=swag)
