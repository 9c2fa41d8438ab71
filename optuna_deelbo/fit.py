"""``fit``: train one configuration inside an Optuna objective, MAP or DE-ELBo by sampler.

The same user objective runs under any sampler. Under :class:`DEELBoSampler` with
``"weight_decay"`` learned, :func:`fit` trains with the DE-ELBo on all ``N`` examples and
returns the final training DE-ELBo loss; otherwise it trains MAP with the suggested weight
decay on the 80 % split and returns the validation NLL. Both are minimised.

Trial user attrs written (all floats unless noted):

* ``mode``: ``"deelbo"`` or ``"map"`` (str)
* ``learned:weight_decay``, ``learned:lambda``, ``learned:tau``, ``learned:sigma`` (DE-ELBo)
* ``learned:trace``: ``[[step, lambda, tau, sigma], ...]`` over training (DE-ELBo)
* ``train:loss``, ``train:nll``: final-epoch means (nats per example)
* ``val:nll``, ``val:accuracy`` (MAP); ``test:nll``, ``test:accuracy`` (DE-ELBo: trained on all N)
* ``time:train_s`` (the training loop), ``time:trial_s`` (the whole call)
* ``failure:reason`` (str) when training diverged and the trial was pruned
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from optuna_deelbo._errors import TrainingDiverged
from optuna_deelbo._validation import nonnegative_finite, positive_finite
from optuna_deelbo.data import Split
from optuna_deelbo.objectives import DEELBoObjective, MAPObjective
from optuna_deelbo.sampler import LEARNED_ATTR_PREFIX, learned_names
from optuna_deelbo.task import TaskSpec
from optuna_deelbo.training import Metrics, TrainResult, evaluate, train

__all__ = ["RetrainResult", "fit", "fit_deelbo", "fit_map", "retrain"]

_TRACE_POINTS = 100


def _check_hparams(lr: float, weight_decay: float | None) -> None:
    positive_finite(lr, "learning rate")
    if weight_decay is not None:
        nonnegative_finite(weight_decay, "weight_decay")


def fit_map(
    task: TaskSpec,
    lr: float,
    weight_decay: float,
    data: Split,
    *,
    val: Split | None = None,
    trial: optuna.trial.Trial | None = None,
) -> tuple[nn.Module, TrainResult]:
    """MAP training with a fixed ``weight_decay`` on ``data``; returns the model and its log."""
    _check_hparams(lr, weight_decay)
    model = task.build_model()
    objective = MAPObjective(model, task.groups(model), task.body_prior(model), weight_decay)
    result = train(
        objective,
        data.x,
        data.y,
        task.train_config(lr),
        val=(val.x, val.y) if val is not None else None,
        trial=trial,
        desc=f"map lr={lr:.2g} wd={weight_decay:.2g}",
        transform=task.train_transform,
        eval_transform=task.eval_transform,
    )
    return model, result


def fit_deelbo(
    task: TaskSpec, lr: float, *, trial: optuna.trial.Trial | None = None
) -> tuple[DEELBoObjective, TrainResult]:
    """DE-ELBo training on all ``N`` examples; returns the objective (model + posterior) and log."""
    _check_hparams(lr, None)
    model = task.build_model()
    objective = DEELBoObjective(
        model,
        task.groups(model),
        task.body_prior(model),
        n_train=task.n_train,
        kappa=task.kappa,
        sigma_mode=task.sigma_mode,
        init_sigma=task.init_sigma,
    )
    result = train(
        objective,
        task.train.x,
        task.train.y,
        task.train_config(lr),
        trial=trial,
        desc=f"deelbo lr={lr:.2g}",
        transform=task.train_transform,
    )
    return objective, result


def _trace(history: list[dict[str, float]]) -> list[list[float]]:
    stride = max(1, math.ceil(len(history) / _TRACE_POINTS))
    rows = history[::stride]
    if history and rows[-1] is not history[-1]:
        rows.append(history[-1])
    return [[r["step"], r.get("lambda", math.nan), r.get("tau", math.nan), r.get("sigma", math.nan)] for r in rows]


def _test_metrics(task: TaskSpec, model: nn.Module) -> Metrics | None:
    if task.test is None:
        return None
    return evaluate(model, task.test.x, task.test.y, transform=task.eval_transform)


def fit(trial: optuna.trial.BaseTrial, task: TaskSpec, *, lr: float, weight_decay: float) -> float:
    """Train one configuration for an Optuna objective and return the value to minimise.

    Args:
        trial: the objective's trial; its study's sampler decides MAP or DE-ELBo.
        task: the fine-tuning problem.
        lr: learning rate (> 0).
        weight_decay: MAP penalty coefficient (ignored, and learned, under ``DEELBoSampler``).

    Returns:
        DE-ELBo: the final training DE-ELBo loss. MAP: the validation NLL (nats per example).

    Raises:
        optuna.TrialPruned: pruned by the study's pruner, or training diverged (reason in the
            ``failure:reason`` user attr).
    """
    start = time.perf_counter()
    attrs: dict[str, Any] = {}
    live_trial = trial if isinstance(trial, optuna.trial.Trial) else None
    try:
        if "weight_decay" in learned_names(trial):
            objective, result = fit_deelbo(task, lr, trial=live_trial)
            last = result.history[-1]
            attrs["mode"] = "deelbo"
            attrs[LEARNED_ATTR_PREFIX + "lambda"] = last["lambda"]
            attrs[LEARNED_ATTR_PREFIX + "weight_decay"] = objective.equivalent_weight_decay(last["lambda"])
            if "tau" in last:
                attrs[LEARNED_ATTR_PREFIX + "tau"] = last["tau"]
            attrs[LEARNED_ATTR_PREFIX + "sigma"] = last["sigma"]
            attrs[LEARNED_ATTR_PREFIX + "trace"] = _trace(result.history)
            attrs["kappa"] = objective.kappa
            eval_start = time.perf_counter()
            test = _test_metrics(task, objective.model)
            if test is not None:
                attrs["test:nll"], attrs["test:accuracy"] = test.nll, test.accuracy
                attrs["time:test_eval_s"] = time.perf_counter() - eval_start
            value = result.final_loss
        else:
            train_split, val_split = task.train_val
            model, result = fit_map(task, lr, weight_decay, train_split, val=val_split, trial=live_trial)
            metrics = evaluate(model, val_split.x, val_split.y, transform=task.eval_transform)
            attrs["mode"] = "map"
            attrs["val:nll"], attrs["val:accuracy"] = metrics.nll, metrics.accuracy
            value = metrics.nll
        attrs["train:loss"], attrs["train:nll"] = result.final_loss, result.final_nll
        attrs["time:train_s"] = result.seconds
    except TrainingDiverged as exc:
        attrs["failure:reason"] = str(exc)
        raise optuna.TrialPruned(str(exc)) from exc
    finally:
        attrs["time:trial_s"] = time.perf_counter() - start
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
    return value


@dataclass(frozen=True)
class RetrainResult:
    """The winner retrained on all ``N``: test metrics (``None`` without a test set) and seconds."""

    test: Metrics | None
    seconds: float
    train_loss: float


def retrain(task: TaskSpec, lr: float, weight_decay: float) -> RetrainResult:
    """Retrain a MAP configuration on all ``N`` examples and evaluate it on the test set."""
    start = time.perf_counter()
    model, result = fit_map(task, lr, weight_decay, task.train)
    seconds = time.perf_counter() - start
    return RetrainResult(test=_test_metrics(task, model), seconds=seconds, train_loss=result.final_loss)
