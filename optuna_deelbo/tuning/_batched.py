"""The DE-ELBo learning-rate search in one run: the planned trials trained as one batched model.

:func:`fit_deelbo_batched` is :func:`~optuna_deelbo.tuning.trials.fit_deelbo` for several learning rates at
once (:func:`optuna_deelbo.train.train_batched`: one ``vmap``-ed forward/backward per step, each
member with its own optimiser, clipping, posterior std, lambda and tau). :func:`run_batched_trials`
takes a planned study's WAITING trials (``study.ask()``), trains them together and ``tell``s each its
own outcome: the trials, their ``learned:*`` / ``select:*`` / ``test:*`` attrs and the study's result
are those of the sequential search (equal within float tolerance), plus :data:`~attrs.BATCHED_MEMBERS`
and :data:`~attrs.BATCHED_WITH`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo.bayes._batchnorm import batchnorm_layers
from optuna_deelbo.bayes._objectives import DEELBoObjective
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._batched import BatchingUnsupported, batching_obstacle, probe_batched_forward, train_batched
from optuna_deelbo.train._halving import Rung
from optuna_deelbo.train._types import TrainResult
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._fit import deelbo_objective, deelbo_outcome, finish_deelbo_training
from optuna_deelbo.tuning._optuna_internals import heartbeat_enabled, study_storage, trial_id
from optuna_deelbo.tuning._trial_queue import PlannedStudy, QueueEmpty

__all__ = ["BatchedRun", "fit_deelbo_batched", "run_batched_trials", "task_batching_obstacle"]

#: One member's outcome of :func:`fit_deelbo_batched`: its objective and log, or why it stopped.
BatchedRun = tuple[DEELBoObjective, TrainResult] | TrainingDiverged | optuna.TrialPruned


def task_batching_obstacle(task: TaskSpec) -> str | None:
    """Why ``task``'s DE-ELBo runs cannot train as one batched model, or ``None``.

    Checkpointing (a batched run is not checkpointed), and BatchNorm without the recipe's
    ``bn_recalibration`` (the batched forward keeps no running statistics) keep the runs sequential;
    so does a model that fails under ``torch.func.vmap`` (found by :func:`probe_batched_forward`).
    """
    if task.checkpointing is not None:
        return "checkpointing is on (batched runs are not checkpointed): the trials run one by one"
    if not task.deelbo_recipe.bn_recalibration and batchnorm_layers(task.build_model()):
        return (
            "the model has BatchNorm and the recipe does not recalibrate it (bn_recalibration=False): "
            "a batched run keeps no running statistics"
        )
    return None


def fit_deelbo_batched(
    task: TaskSpec,
    lrs: Sequence[float],
    *,
    trials: Sequence[optuna.trial.Trial | None] | None = None,
    rungs: Sequence[Rung] = (),
    on_stop: Callable[[int, TrainingDiverged | optuna.TrialPruned], None] | None = None,
    on_rung: Callable[[int, list[float | None]], None] | None = None,
) -> list[BatchedRun]:
    """DE-ELBo runs on all ``N`` for every learning rate in ``lrs`` at once; per member as :func:`fit_deelbo`.

    Each member's model is built, trained (same minibatches, augmentations and posterior draws as
    its own run), BatchNorm-recalibrated for its mean weights and returned with its log.
    ``rungs``, ``on_stop``, ``on_rung``: successive halving, as :func:`~optuna_deelbo.train.train_batched`.

    Raises:
        BatchingUnsupported: :func:`task_batching_obstacle` or the models name a reason.
    """
    obstacle = task_batching_obstacle(task)
    if obstacle is not None:
        raise BatchingUnsupported(obstacle)
    objectives = [deelbo_objective(task) for _ in lrs]
    configs = [task.deelbo_train_config(lr) for lr in lrs]
    outcomes = train_batched(
        objectives,
        task.train.x,
        task.train.y,
        configs,
        trials=trials,
        desc=f"deelbo lr={','.join(f'{lr:.2g}' for lr in lrs)}",
        transform=task.train_transform,
        mixing=task.mixing(),
        rungs=rungs,
        on_stop=on_stop,
        on_rung=on_rung,
    )
    runs: list[BatchedRun] = []
    for objective, outcome in zip(objectives, outcomes, strict=True):
        if isinstance(outcome, TrainResult):
            finish_deelbo_training(task, objective, outcome)
            runs.append((objective, outcome))
        else:
            runs.append(outcome)
    return runs


def _probe(task: TaskSpec) -> None:
    """Raise :class:`BatchingUnsupported` if ``task``'s runs cannot be batched (before any trial is taken)."""
    obstacle = task_batching_obstacle(task)
    if obstacle is not None:
        raise BatchingUnsupported(obstacle)
    objectives = [deelbo_objective(task) for _ in range(2)]
    configs = [task.deelbo_train_config(1.0)] * 2
    obstacle = batching_obstacle(objectives, configs)
    if obstacle is not None:
        raise BatchingUnsupported(obstacle)
    probe_batched_forward(objectives, task.train.x, configs[0], task.train_transform)


@contextmanager
def _heartbeats(storage: optuna.storages.BaseStorage, trials: Sequence[optuna.trial.Trial]) -> Iterator[None]:
    """Beat every trial's heartbeat while the batch trains (as ``optimize`` does for its one trial)."""
    if not heartbeat_enabled(storage):
        yield
        return
    interval = float(storage.get_heartbeat_interval() or 60)  # type: ignore[attr-defined]
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial in trials:
                storage.record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]

    thread = threading.Thread(target=beat, daemon=True, name="optuna-deelbo-batched-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _take_waiting(study: PlannedStudy) -> list[optuna.trial.Trial]:
    taken: list[optuna.trial.Trial] = []
    while True:
        try:
            taken.append(study.ask())
        except QueueEmpty:
            return taken


def run_batched_trials(
    study: PlannedStudy,
    task: TaskSpec,
    suggest_lr: Callable[[optuna.trial.Trial], float],
    *,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    rungs: Sequence[Rung] = (),
) -> int:
    """Take every WAITING trial of ``study``, train them as one batched DE-ELBo model, ``tell`` each.

    A member that stops before the end (diverged, pruned, cut at a successive-halving rung) is told
    at once, so an interrupted search keeps it and a resume retries only the members still training.

    Args:
        suggest_lr: the user objective's parameter suggestions for one trial (``lr`` and the
            placeholder ``weight_decay``, as the sequential objective suggests them); returns the lr.
        on_trial: called with each finished trial, as ``optimize``'s callbacks.
        rungs: successive halving (:func:`~optuna_deelbo.train.halving_rungs`, counted over the planned
            learning rates); each member's rung losses go to its :data:`~attrs.HALVING_RUNGS` attr.

    Returns:
        The number of trials this run finished.

    Raises:
        BatchingUnsupported: before any trial is taken, when the task's runs cannot be batched
            (the caller runs them one by one).
    """
    if "weight_decay" not in getattr(study.sampler, "learned", ()):  # before any trial is taken
        raise ConfigError("a batched search trains DE-ELBo runs: the study's sampler must be a DEELBoSampler")
    _probe(task)
    try:
        trials = _take_waiting(study)
    except BaseException:  # stopped while taking them: none stays RUNNING
        study.fail_taken()
        raise
    if not trials:
        return 0
    numbers = [t.number for t in trials]
    started = time.perf_counter()
    told: dict[int, float] = {}  # member index -> its share of the batch's seconds, once told
    rung_losses: list[list[list[float]]] = [[] for _ in trials]

    def tell(index: int, run: BatchedRun, share_s: float) -> None:
        _tell(study, task, trials[index], run, numbers, share_s)
        told[index] = share_s
        if on_trial is not None:
            on_trial(study, study.get_trials(deepcopy=False)[trials[index].number])

    def stopped(index: int, run: TrainingDiverged | optuna.TrialPruned) -> None:
        # its share: the batch's seconds so far over the members that trained with it
        tell(index, run, (time.perf_counter() - started) / len(trials))

    def ranked(step: int, losses: list[float | None]) -> None:
        for index, loss in enumerate(losses):
            if loss is not None:
                rung_losses[index].append([step, loss])
                trials[index].set_user_attr(A.HALVING_RUNGS, rung_losses[index])

    try:
        lrs = [suggest_lr(t) for t in trials]
        with _heartbeats(study_storage(study), trials):
            runs = fit_deelbo_batched(task, lrs, trials=trials, rungs=rungs, on_stop=stopped, on_rung=ranked)
        train_s = time.perf_counter() - started
        rest = [i for i in range(len(trials)) if i not in told]
        share_s = (train_s - sum(told.values())) / max(1, len(rest))  # the shares add up to the batch's seconds
        for index in rest:
            tell(index, runs[index], share_s)
    except BaseException:  # as optimize does: a trial whose objective raised is failed, never left RUNNING
        for index, trial in enumerate(trials):
            if index not in told:
                study.tell(trial, state=TrialState.FAIL)
        raise
    return len(trials)


def _tell(
    study: optuna.Study, task: TaskSpec, trial: optuna.trial.Trial, run: BatchedRun, batch: list[int], share_s: float
) -> None:
    """Write one member's attrs (those ``od.fit`` writes) and tell the study its value or its pruning."""
    start = time.perf_counter()
    attrs: dict[str, Any] = {A.BATCHED_MEMBERS: len(batch), A.BATCHED_WITH: batch}
    state, value = TrialState.PRUNED, None
    try:
        if isinstance(run, tuple):
            objective, result = run
            value = deelbo_outcome(task, objective, result, attrs)
            state = TrialState.COMPLETE
        else:  # stopped before the end: diverged, pruned, or cut at a halving rung
            attrs[A.TIME_TRAIN_S] = share_s
            if str(run):
                attrs[A.FAILURE_REASON] = str(run)
    except TrainingDiverged as exc:
        attrs[A.FAILURE_REASON] = str(exc)
    finally:
        attrs[A.TIME_TRIAL_S] = share_s + time.perf_counter() - start
        A.set_trial_attrs(trial, attrs)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
