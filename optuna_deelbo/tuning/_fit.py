"""``fit``: train one configuration inside an Optuna objective, MAP or DE-ELBo by sampler.

The same user objective runs under any sampler. Under :class:`DEELBoSampler` with
``"weight_decay"`` learned, :func:`fit` trains with the DE-ELBo on all ``N`` examples and
returns the score of the task's DE-ELBo recipe's selection rule (``train-loss`` by default: the final
training DE-ELBo loss); otherwise it trains MAP with the suggested weight
decay on the 80 % split and returns the validation NLL. Both are minimised.

Trial user attrs written (all floats unless noted):

* ``mode``: ``"deelbo"`` or ``"map"`` (str)
* ``learned:weight_decay``, ``learned:lambda``, ``learned:tau``, ``learned:sigma`` (DE-ELBo)
* ``learned:trace``: ``[[step, lambda, tau, sigma], ...]`` over training (DE-ELBo)
* ``train:loss``, ``train:nll``: final-epoch means (nats per example)
* ``select:rule`` (str) and ``select:<rule>``: the DE-ELBo selection rule and its score (the
  trial's value), ``time:select_s``; ``learned:lambda_layers`` (dict) with per-layer lambda
* ``val:nll``, ``val:accuracy`` (MAP); ``test:nll``, ``test:accuracy`` (DE-ELBo: trained on all N)
* ``time:train_s`` (the training loop; with ``time:recalibrate_s``, BatchNorm after DE-ELBo),
  ``time:trial_s`` (the whole call)
* ``failure:reason`` (str) when training diverged and the trial was pruned
* with ``task.checkpointing``: ``checkpoint:artifact_id``, ``checkpoint:step``,
  ``resumed_from_step`` (int), ``resumed_from_trial``, ``resumed_from_artifact``,
  ``checkpoint:resume_error`` (see :class:`optuna_deelbo.tuning.Checkpointing`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
import torch
from torch import nn

from optuna_deelbo._errors import CheckpointError, ConfigError, TrainingDiverged
from optuna_deelbo._validation import learning_rate, nonnegative_finite
from optuna_deelbo.bayes._batchnorm import recalibrate_batchnorm
from optuna_deelbo.bayes._deelbo import DEELBo
from optuna_deelbo.bayes._objectives import DEELBoObjective, MAPObjective
from optuna_deelbo.bayes._selection import selection_scores
from optuna_deelbo.data._splits import Split
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._checkpoint import CheckpointHook
from optuna_deelbo.train._early_stopping import continue_until
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule
from optuna_deelbo.train._training import Metrics, TrainResult, evaluate, train_model
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._checkpoints import Checkpointing
from optuna_deelbo.tuning._sampler import learned_names

__all__ = [
    "RetrainResult",
    "deelbo_objective",
    "deelbo_outcome",
    "finish_deelbo_training",
    "fit",
    "fit_deelbo",
    "fit_map",
    "fit_once",
    "recalibrate_for_mean_weights",
    "retrain",
    "run_attrs",
    "score_deelbo_run",
]

_TRACE_POINTS = 100


def _check_hparams(lr: float, weight_decay: float | None) -> None:
    learning_rate(lr, "learning rate (lr)")
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
    schedule: StepSchedule | AdaptiveFeedback | None = None,
    steps: int | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
    weight_optimizer: str = "sgd",
) -> tuple[nn.Module, TrainResult]:
    """MAP training on ``data``; returns the model and its log.

    Args:
        weight_decay: fixed weight decay, or the starting value when ``schedule`` sets it.
        val: held-out split: reported to ``trial``, used by early stopping
            (``task.regularization.patience``) and by an adaptive schedule.
        schedule: pull-down / pull-up / adaptive weight decay (see :func:`train`).
        steps: overrides ``task.steps`` (e.g. retraining for an early-stopped step count).
        checkpoint: see :func:`~optuna_deelbo.train.train_model`.
        resume: see :func:`~optuna_deelbo.train.train_model`.
        weight_optimizer: ``TrainConfig.weight_optimizer`` (``"prodigy"``: ``lr`` is its multiplier).
    """
    _check_hparams(lr, weight_decay)
    model = task.build_model()
    objective = MAPObjective(
        model, task.groups(model), task.body_prior(model), weight_decay, penalty=task.regularization.penalty_fn
    )
    config = dataclasses.replace(task.train_config(lr, steps), weight_optimizer=weight_optimizer)
    if val is not None and task.regularization.patience is not None:
        config = dataclasses.replace(config, patience=task.regularization.patience)
    result = train_model(
        objective,
        data.x,
        data.y,
        config,
        val=(val.x, val.y) if val is not None else None,
        trial=trial,
        desc=f"map lr={lr:.2g} wd={weight_decay:.2g}",
        transform=task.train_transform,
        eval_transform=task.eval_transform,
        mixing=task.mixing(),
        weight_decay_schedule=schedule,
        checkpoint=checkpoint,
        resume=resume,
    )
    return model, result


def fit_deelbo(
    task: TaskSpec,
    lr: float,
    *,
    trial: optuna.trial.Trial | None = None,
    checkpoint: CheckpointHook | None = None,
    resume: Mapping[str, Any] | None = None,
) -> tuple[DEELBoObjective, TrainResult]:
    """DE-ELBo training on all ``N`` examples; returns the objective (model + posterior) and log.

    The task's :class:`~optuna_deelbo.bayes.DEELBoRecipe` sets the posterior, the
    prior structure, clipping and sigma's optimiser; with ``bn_recalibration`` the BatchNorm
    statistics are recomputed with the mean weights after training (inside the timed loop's
    result: ``result.seconds`` includes it). ``checkpoint`` and ``resume``: see
    :func:`~optuna_deelbo.train.train_model`.
    """
    _check_hparams(lr, None)
    objective = deelbo_objective(task)
    result = train_model(
        objective,
        task.train.x,
        task.train.y,
        task.deelbo_train_config(lr),
        trial=trial,
        desc=f"deelbo lr={lr:.2g}",
        transform=task.train_transform,
        mixing=task.mixing(),
        checkpoint=checkpoint,
        resume=resume,
    )
    finish_deelbo_training(task, objective, result)
    return objective, result


def deelbo_objective(task: TaskSpec) -> DEELBoObjective:
    """A fresh DE-ELBo objective for ``task``: its model (seeded), prior, head and recipe's posterior."""
    model = task.build_model()
    deelbo = DEELBo.from_recipe(
        model, task.n_train, task.body_prior(model), task.deelbo_recipe, head=task.groups(model), kappa=task.kappa
    )
    return DEELBoObjective(deelbo, penalty=task.regularization.penalty_fn)


def finish_deelbo_training(task: TaskSpec, objective: DEELBoObjective, result: TrainResult) -> None:
    """After a DE-ELBo run: with the recipe's ``bn_recalibration``, BatchNorm statistics for the mean weights.

    The seconds it takes are added to ``result.seconds``.
    """
    if task.deelbo_recipe.bn_recalibration:
        start = time.perf_counter()
        recalibrate_for_mean_weights(task, objective.model)
        result.recalibrate_s = time.perf_counter() - start
        result.seconds += result.recalibrate_s


def recalibrate_for_mean_weights(task: TaskSpec, model: nn.Module) -> int:
    """Recompute ``model``'s BatchNorm statistics with its (mean) weights on the task's training set.

    The inputs go through ``task.train_transform``, the augmentation the weights were trained
    with: on Split-CIFAR (N = 500, seed 0, lr 0.03) statistics of unaugmented images instead cost
    4.2 points of test accuracy (64.5 % against 68.6 %), those of augmented ones none (68.6 %).
    Returns the number of BatchNorm layers.
    """
    torch.manual_seed(task.seed)  # the augmentation's draws
    return recalibrate_batchnorm(model, task.train.x, transform=task.train_transform)


def score_deelbo_run(
    task: TaskSpec, objective: DEELBoObjective, result: TrainResult, rules: Sequence[str] | None = None
) -> dict[str, float]:
    """Selection scores of a finished :func:`fit_deelbo` run (nats per example, lower is better).

    Args:
        rules: names from ``SELECTION_RULES``; ``None`` = the task's DE-ELBo recipe's own rule only.
    """
    recipe = task.deelbo_recipe
    return selection_scores(
        objective.deelbo,
        task.train.x,
        task.train.y,
        train_loss=result.final_loss,
        rules=(recipe.selection,) if rules is None else rules,
        samples=recipe.selection_samples,
        transform=task.eval_transform,
        seed=task.seed,
    )


def _trace(history: list[dict[str, float]]) -> list[list[float]]:
    stride = max(1, math.ceil(len(history) / _TRACE_POINTS))
    rows = history[::stride]
    if history and rows[-1] is not history[-1]:
        rows.append(history[-1])
    return [[r["step"], r.get("lambda", math.nan), r.get("tau", math.nan), r.get("sigma", math.nan)] for r in rows]


def _weight_decay_trajectory(schedule: StepSchedule | AdaptiveFeedback, steps: int) -> list[list[float]]:
    """``[[start_step, weight_decay], ...]``: the 1-based step from which each value was used."""
    if isinstance(schedule, StepSchedule):
        return [[start, value] for start, value in schedule.trajectory() if start <= steps]
    rows = [[1, schedule.initial]]
    for step, value, _, _ in schedule.history:
        if value != rows[-1][1] and step < steps:
            rows.append([step + 1, value])
    return rows


_Run = TypeVar("_Run")


def _resumable(
    trial: optuna.trial.Trial | None,
    task: TaskSpec,
    run: Callable[[CheckpointHook | None, Mapping[str, Any] | None], _Run],
    attrs: dict[str, Any],
) -> _Run:
    """``run(checkpoint, resume)`` with the task's checkpointing for ``trial``, resuming a retried trial.

    A checkpoint that cannot be read or does not fit the run is reported as a warning and in
    ``checkpoint:resume_error``, and the run starts again from step 0.
    """
    checkpointing = task.checkpointing if trial is not None else None
    if trial is None or checkpointing is None:
        return run(None, None)
    hook = checkpointing.hook(trial)
    try:
        found = checkpointing.find_resume(trial)
    except CheckpointError as exc:  # unreadable: restart
        _restarting(trial, exc, attrs)
        found = None
    attrs[A.RESUMED_STEP] = found.step if found is not None else 0
    if found is None:
        return run(hook, None)
    attrs[A.RESUMED_TRIAL], attrs[A.RESUMED_ARTIFACT] = found.trial_number, found.artifact_id
    trial.set_user_attr(A.RESUMED_STEP, found.step)  # visible while the trial runs
    try:
        return run(hook, found.state)
    except CheckpointError as exc:  # readable but of another run: restart
        _restarting(trial, exc, attrs)
        attrs[A.RESUMED_STEP] = 0
        del attrs[A.RESUMED_TRIAL], attrs[A.RESUMED_ARTIFACT]
        return run(hook, None)


def _restarting(trial: optuna.trial.Trial, exc: CheckpointError, attrs: dict[str, Any]) -> None:
    """A checkpoint cannot be used: warn, keep the reason (also on the trial at once), train from step 0.

    A worker fleet must not stall on one damaged file: the retry trains from scratch, which
    costs time but gives the same result.
    """
    warnings.warn(f"trial {trial.number}: restarting from step 0: {exc}", RuntimeWarning, stacklevel=3)
    trial.set_user_attr(A.CHECKPOINT_RESUME_ERROR, str(exc))
    attrs[A.CHECKPOINT_RESUME_ERROR] = str(exc)


def _fresh(schedule: StepSchedule | AdaptiveFeedback | None) -> StepSchedule | AdaptiveFeedback | None:
    """``schedule`` at its start (in place): a restarted run must not see a failed attempt's adaptive updates."""
    if isinstance(schedule, AdaptiveFeedback):
        schedule.load_state_dict({"value": schedule.initial, "history": []})
    return schedule


def _test_metrics(task: TaskSpec, model: nn.Module) -> Metrics | None:
    if task.test is None:
        return None
    return evaluate(model, task.test.x, task.test.y, transform=task.eval_transform)


def deelbo_outcome(task: TaskSpec, objective: DEELBoObjective, result: TrainResult, attrs: dict[str, Any]) -> float:
    """Fill ``attrs`` with a finished DE-ELBo run's learned values, selection score, test metrics and run log.

    Returns:
        The trial's value: the score of the task's DE-ELBo recipe's selection rule.
    """
    attrs.update(A.prefixed_learned(objective.deelbo.learned_values()))  # at the final weights, as report_learned
    attrs[A.LEARNED_TRACE] = _trace(result.history)
    start = time.perf_counter()
    rule = task.deelbo_recipe.selection
    attrs[A.SELECT_RULE] = rule
    attrs[A.select_key(rule)] = value = score_deelbo_run(task, objective, result)[rule]
    attrs[A.TIME_SELECT_S] = time.perf_counter() - start
    _test_attrs(task, objective.model, attrs)
    run_attrs(result, attrs)
    return value


def _test_attrs(task: TaskSpec, model: nn.Module, attrs: dict[str, Any]) -> None:
    """The model's test NLL and accuracy, and the seconds they took, into ``attrs`` (nothing without a test set)."""
    start = time.perf_counter()
    test = _test_metrics(task, model)
    if test is not None:
        attrs[A.TEST_NLL], attrs[A.TEST_ACCURACY] = test.nll, test.accuracy
        attrs[A.TIME_TEST_EVAL_S] = time.perf_counter() - start


def run_attrs(result: TrainResult, attrs: dict[str, Any]) -> None:
    """The attrs every finished run gets: final training loss and NLL, training seconds."""
    attrs[A.TRAIN_LOSS], attrs[A.TRAIN_NLL] = result.final_loss, result.final_nll
    attrs[A.TIME_TRAIN_S] = result.seconds
    if result.recalibrate_s:
        attrs[A.TIME_RECALIBRATE_S] = result.recalibrate_s


def _require_minimize(trial: optuna.trial.BaseTrial, what: str) -> None:
    """Refuse a trial whose (single-objective) study maximises: ``what`` returns a loss to minimise.

    Trials without a study (``optuna.trial.FixedTrial``) and multi-objective studies pass.
    """
    study = getattr(trial, "study", None)
    directions = getattr(study, "directions", None)
    if directions is not None and len(directions) == 1 and directions[0] == optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(
            f"{what} returns a loss to minimise, but study {getattr(study, 'study_name', '?')!r} has "
            "direction 'maximize'; create the study with direction='minimize'"
        )


def fit(
    trial: optuna.trial.BaseTrial,
    task: TaskSpec,
    *,
    lr: float,
    weight_decay: float,
    schedule: StepSchedule | AdaptiveFeedback | None = None,
) -> float:
    """Train one configuration for an Optuna objective and return the value to minimise.

    Args:
        trial: the objective's trial; its study's sampler decides MAP or DE-ELBo.
        task: the fine-tuning problem.
        lr: learning rate (``1e-10`` to ``1e6``).
        weight_decay: MAP penalty coefficient (ignored, and learned, under ``DEELBoSampler``).
        schedule: MAP only: a weight-decay schedule instead of the fixed value; the
            trajectory is stored as the ``lambda:trajectory`` user attr ``[[step, wd], ...]``.

    Returns:
        DE-ELBo: the score of ``task.recipe.selection`` (default: the final training DE-ELBo
        loss). MAP: the validation NLL. Both in nats per example.

    Raises:
        ConfigError: bad arguments, or the trial's study maximises (``fit`` returns a loss).
        optuna.TrialPruned: pruned by the study's pruner, or training diverged (reason in the
            ``failure:reason`` user attr).
    """
    if not isinstance(trial, optuna.trial.BaseTrial):
        raise ConfigError(f"trial must be the objective's optuna trial, got {type(trial).__name__}")
    if not isinstance(task, TaskSpec):
        raise ConfigError(f"task must be an optuna_deelbo.TaskSpec, got {type(task).__name__}")
    _require_minimize(trial, "od.fit")
    _check_hparams(lr, weight_decay)  # the weight decay too: a NaN is a mistake even where it is learned
    live_trial = trial if isinstance(trial, optuna.trial.Trial) else None
    with _trial_attrs(trial) as attrs:
        if "weight_decay" in learned_names(trial):
            if schedule is not None:
                raise ConfigError("a weight-decay schedule is for MAP runs; under DEELBoSampler it is learned")
            objective, result = _resumable(
                live_trial,
                task,
                lambda hook, state: fit_deelbo(task, lr, trial=live_trial, checkpoint=hook, resume=state),
                attrs,
            )
            value = deelbo_outcome(task, objective, result, attrs)
        else:
            train_split, val_split = task.train_val
            model, result = _resumable(
                live_trial,
                task,
                lambda hook, state: fit_map(
                    task,
                    lr,
                    weight_decay,
                    train_split,
                    val=val_split,
                    trial=live_trial,
                    schedule=_fresh(schedule),
                    checkpoint=hook,
                    resume=state,
                ),
                attrs,
            )
            metrics = evaluate(model, val_split.x, val_split.y, transform=task.eval_transform)
            attrs[A.MODE] = "map"
            if result.best_step is not None:
                attrs[A.TRAIN_BEST_STEP], attrs[A.TRAIN_STOPPED_STEP] = result.best_step, result.stopped_step
                attrs[A.TRAIN_LOSS_AT_BEST] = result.train_loss_at_best
            if schedule is not None:
                attrs[A.LAMBDA_TRAJECTORY] = _weight_decay_trajectory(schedule, result.stopped_step)
            attrs[A.VAL_NLL], attrs[A.VAL_ACCURACY] = metrics.nll, metrics.accuracy
            value = metrics.nll
            run_attrs(result, attrs)
        if live_trial is not None and isinstance(task.checkpointing, Checkpointing):
            task.checkpointing.export_series(live_trial, attrs)  # the series as files beside the checkpoints
    return value


def fit_once(
    trial: optuna.trial.Trial, task: TaskSpec, *, lr: float, weight_decay: float, weight_optimizer: str = "sgd"
) -> float:
    """Train one MAP configuration on all ``N`` for an Optuna objective: no search, no validation split.

    What a user runs instead of a search (the ``default`` and ``lr-free`` strategies): the trial's
    model is the final model, so its test metrics are the strategy's result. ``weight_optimizer``:
    ``TrainConfig.weight_optimizer`` (``"prodigy"``: ``lr`` is its multiplier).

    Returns:
        The final-epoch training loss (nats per example).

    Raises:
        optuna.TrialPruned: training diverged (reason in the ``failure:reason`` user attr).
    """
    _require_minimize(trial, "the default / lr-free strategies' objective (fit_once)")
    _check_hparams(lr, weight_decay)
    with _trial_attrs(trial) as attrs:
        attrs[A.MODE] = "map"
        model, result = fit_map(task, lr, weight_decay, task.train, weight_optimizer=weight_optimizer)
        run_attrs(result, attrs)
        _test_attrs(task, model, attrs)
    return result.final_loss


@contextlib.contextmanager
def _trial_attrs(trial: optuna.trial.BaseTrial) -> Iterator[dict[str, Any]]:
    """The attrs a trial's run fills, written to ``trial`` however the run ends (with ``time:trial_s``).

    A run that diverged (:class:`TrainingDiverged`) prunes the trial, its reason in ``failure:reason``.
    However the run ends, the finished frames of its traceback lose their locals (:func:`traceback.clear_frames`;
    the printed traceback keeps every file and line): Optuna keeps a pruned or failed trial's exception in a
    reference cycle (``func_err`` -> traceback -> frames), so without this each such trial's model, optimizer
    and DE-ELBo stayed alive until the garbage collector ran (3 of 12 TPE trials' models, tests/test_memory.py).
    """
    start = time.perf_counter()
    attrs: dict[str, Any] = {}
    try:
        yield attrs
    except TrainingDiverged as exc:
        traceback.clear_frames(exc.__traceback__)
        attrs[A.FAILURE_REASON] = str(exc)
        raise optuna.TrialPruned(str(exc)) from exc
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        attrs[A.TIME_TRIAL_S] = time.perf_counter() - start
        A.set_trial_attrs(trial, attrs)


@dataclass(frozen=True)
class RetrainResult:
    """The winner retrained on all ``N``: test metrics (``None`` without a test set) and seconds."""

    test: Metrics | None
    seconds: float
    train_loss: float


def retrain(
    task: TaskSpec,
    lr: float,
    weight_decay: float,
    *,
    schedule: StepSchedule | AdaptiveFeedback | None = None,
) -> RetrainResult:
    """Retrain a MAP configuration on all ``N`` examples and evaluate it on the test set.

    With early stopping on (``task.regularization.patience``) the winner's early-stopped run
    is repeated on the 80 % split (deterministic for a seed) to find its best step, then:

    * ``retrain="steps"`` (Goodfellow et al. Alg. 7.2): train from scratch on all ``N`` for
      that many steps;
    * ``retrain="continue"`` (Alg. 7.3): keep training the early-stopped model on all ``N``
      (constant learning rate ``lr``, in chunks of ``eval_every`` steps) until the loss on the
      former validation part is at most the early-stopped training loss, or ``task.steps``
      more steps have run (it may never get there).
    """
    start = time.perf_counter()
    reg = task.regularization
    if reg.patience is None:
        model, result = fit_map(task, lr, weight_decay, task.train, schedule=schedule)
    else:
        train_split, val_split = task.train_val
        model, early = fit_map(task, lr, weight_decay, train_split, val=val_split, schedule=schedule)
        best_step = early.best_step if early.best_step is not None else early.stopped_step
        if reg.retrain == "steps":
            model, result = fit_map(task, lr, weight_decay, task.train, schedule=schedule, steps=best_step)
        else:
            target = early.train_loss_at_best if early.train_loss_at_best is not None else early.final_loss
            model, result = _continue_training(task, model, lr, weight_decay, val_split, target)
    seconds = time.perf_counter() - start
    return RetrainResult(test=_test_metrics(task, model), seconds=seconds, train_loss=result.final_loss)


def _continue_training(
    task: TaskSpec, model: nn.Module, lr: float, weight_decay: float, val: Split, target: float
) -> tuple[nn.Module, TrainResult]:
    """Algorithm 7.3: train ``model`` on all N until the loss on ``val`` is <= ``target`` (capped)."""
    objective = MAPObjective(
        model, task.groups(model), task.body_prior(model), weight_decay, penalty=task.regularization.penalty_fn
    )
    chunk = min(task.train_config(lr).eval_every, task.steps)
    config = dataclasses.replace(task.train_config(lr, steps=chunk), cosine=False, restart_period=None)
    last: list[TrainResult] = []

    def step_fn() -> float:
        last.append(train_model(objective, task.train.x, task.train.y, config, mixing=task.mixing(), desc="continue"))
        return evaluate(model, val.x, val.y, transform=task.eval_transform).nll

    continue_until(target, step_fn, max_steps=chunk * max(1, task.steps // chunk), check_every=chunk)
    return model, last[-1]
