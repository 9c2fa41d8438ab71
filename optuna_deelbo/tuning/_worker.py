"""Many workers on one study: plan it once, let any number of processes work it off, finish it once.

1. :func:`plan_strategy_study` (``optuna-deelbo compare --plan-only``) creates a strategy's
   study with every planned trial enqueued and the :class:`~optuna_deelbo.tuning.TaskRecipe`
   stored as the study user attr ``task_recipe``; it trains nothing.
2. :func:`run_worker` (``optuna-deelbo worker``, on any number of processes and machines
   sharing the storage) rebuilds the task from the recipe and takes planned trials until the
   queue is empty (:func:`~optuna_deelbo.tuning.run_queue`). Its storage has heartbeats:
   a trial whose worker died is failed once ``grace_period`` has passed and queued again
   (``RetryHeartbeatStaleTrialCallback``); the retry resumes from the dead trial's newest
   checkpoint. A worker leaves only when nothing is waiting or running.
3. :func:`finish_planned_study` (``optuna-deelbo finish``), run once after the workers have
   left, picks the winner, retrains it if the strategy does and writes the study's results
   (:meth:`~optuna_deelbo.tuning.strategies.Strategy.finish`). It refuses a study that still has
   waiting or running trials. Finishing is a separate, explicit step so that exactly one
   process retrains the winner, with no race between the last workers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError, StorageError
from optuna_deelbo.data._task import TaskSpec
from optuna_deelbo.tuning._recipe import RECIPE_ATTR, TaskRecipe
from optuna_deelbo.tuning._storage import open_storage
from optuna_deelbo.tuning._trial_queue import PlannedStudy, queue_progress, run_queue
from optuna_deelbo.tuning.strategies import PLAN_ATTR, Strategy, StrategyResult, get_strategy

__all__ = [
    "DEFAULT_GRACE_PERIOD_S",
    "DEFAULT_HEARTBEAT_S",
    "RECONNECT_PAUSES_S",
    "PlannedJob",
    "finish_planned_study",
    "load_planned_job",
    "plan_strategy_study",
    "run_worker",
    "search_seconds",
]

#: A worker's default heartbeat interval (s).
DEFAULT_HEARTBEAT_S = 10
#: A worker's default grace period (s) before a trial without heartbeat counts as dead.
DEFAULT_GRACE_PERIOD_S = 30
#: Pauses (s) of a worker whose storage stopped answering (a database restart, a network blip)
#: before each new attempt: about 5 minutes in all, then it exits with a StorageError and can be
#: started again. The budget starts afresh once a trial finishes.
RECONNECT_PAUSES_S: tuple[float, ...] = (1, 2, 4, 8, 15, *(30,) * 9)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the database being unreachable or busy, not a bad request."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc.__cause__ or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def plan_strategy_study(
    strategy: Strategy,
    recipe: TaskRecipe,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    task: TaskSpec | None = None,
    if_exists: str = "error",
) -> optuna.Study:
    """Create ``strategy``'s study with its trials queued and the recipe stored.

    Args:
        task: the recipe's task when the caller has built it already (else it is built here:
            the strategy's sampler and plan may depend on it).
        if_exists: a study of that name already there: ``"error"`` (refuse), ``"resume"`` (keep it,
            its interrupted trials queued again), ``"overwrite"`` (replace it); see
            :meth:`~optuna_deelbo.tuning.strategies.Strategy.create_study`.
    """
    built = task if task is not None else recipe.build()[0]
    return strategy.create_study(built, storage, study_name, attrs={RECIPE_ATTR: recipe.to_json()}, if_exists=if_exists)


@dataclass(frozen=True)
class PlannedJob:
    """What a worker rebuilt from a planned study: its strategy, recipe and task (with checkpointing)."""

    study_name: str
    strategy: Strategy
    recipe: TaskRecipe
    task: TaskSpec


def _existing_study(storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        listed = ", ".join(repr(n) for n in names) if names else "none"
        raise ConfigError(
            f"study {study_name!r} does not exist in this storage (studies there: {listed}); "
            "create it first with `optuna-deelbo compare --plan-only`"
        ) from None
    return optuna.load_study(study_name=study_name, storage=storage)


def load_planned_job(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    device: str | None = None,
    artifacts: str | Path | None = None,
    tasks: dict[TaskRecipe, TaskSpec] | None = None,
) -> PlannedJob:
    """Read a planned study's strategy and recipe and build its task.

    Args:
        artifacts: overrides the recipe's checkpoint directory.
        tasks: a cache of tasks already built, keyed by recipe (several studies of one task
            share one pretraining).

    Raises:
        ConfigError: the study does not exist, or has no (valid) recipe or strategy.
    """
    study = _existing_study(storage, study_name)
    attrs = study.user_attrs
    if RECIPE_ATTR not in attrs:
        raise ConfigError(
            f"study {study_name!r} has no task recipe (user attr {RECIPE_ATTR!r}): it was not created by "
            "`optuna-deelbo compare --plan-only` (or plan_strategy_study), so a worker cannot rebuild its task"
        )
    try:
        recipe = TaskRecipe.from_json(attrs[RECIPE_ATTR])
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"study {study_name!r}: bad task recipe: {exc}") from exc
    if "strategy" not in attrs:
        raise ConfigError(f"study {study_name!r} has no 'strategy' user attr; it was not created by a strategy")
    plan = attrs.get(PLAN_ATTR)
    lrs = plan.get("learning_rates") if isinstance(plan, dict) else None
    strategy = get_strategy(str(attrs["strategy"]), learning_rates=lrs)
    cache = tasks if tasks is not None else {}
    if recipe not in cache:
        cache[recipe] = recipe.build(device)[0]
    task = replace(cache[recipe], checkpointing=recipe.checkpointing(artifacts))
    return PlannedJob(study_name=study_name, strategy=strategy, recipe=recipe, task=task)


def run_worker(
    storage_url: str,
    study_names: Sequence[str],
    *,
    device: str | None = None,
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S,
    grace_period: int | None = DEFAULT_GRACE_PERIOD_S,
    max_retry: int | None = 3,
    artifacts: str | Path | None = None,
    poll_s: float = 1.0,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> int:
    """Work off the queues of planned studies until nothing is waiting or running; return the trials run here.

    Args:
        storage_url: the shared RDB storage (PostgreSQL for many machines, SQLite for one).
        study_names: studies created by :func:`plan_strategy_study`, worked off in order.
        device: where this worker trains (``None`` = CUDA when present).
        heartbeat_interval, grace_period, max_retry: see
            :func:`~optuna_deelbo.tuning.open_storage`.
        artifacts: overrides the recipe's checkpoint directory (same store, other mount point).
        poll_s: how often a worker with nothing to take looks for retries of dead trials.
        on_trial: called after every trial this worker finished.

    Raises:
        StorageError: the storage cannot be reached. ConfigError: a study does not exist or
            has no recipe, or a heartbeat setting is bad.
    """
    if not study_names:
        raise ConfigError("no study given: pass at least one --study NAME")
    storage = open_storage(
        storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry
    )
    tasks: dict[TaskRecipe, TaskSpec] = {}
    jobs = []
    for name in dict.fromkeys(study_names):
        job = load_planned_job(storage, name, device=device, artifacts=artifacts, tasks=tasks)
        study = PlannedStudy(
            study_name=name, storage=storage, sampler=job.strategy.sampler(job.task), pruner=job.strategy.pruner()
        )
        jobs.append((study, job.strategy.objective(job.task)))
    return _run_surviving_outages(jobs, storage_url, poll_s=poll_s, on_trial=on_trial)


def _run_surviving_outages(
    jobs: Sequence[tuple[PlannedStudy, Callable[[optuna.Trial], float]]],
    storage_url: str,
    *,
    poll_s: float,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None,
) -> int:
    """:func:`run_queue` again after each storage outage (see :data:`RECONNECT_PAUSES_S`); trials run here.

    A trial cut off by the outage is left RUNNING without heartbeats; once the storage is back, a
    worker fails it as stale and its retry runs (from its checkpoint), so each planned trial still
    completes once. A trial this worker finished after others had already taken it for dead
    (``UpdateFinishedTrialError`` on its result) is dropped: its retry counts instead.
    """
    ran = 0
    pauses = iter(RECONNECT_PAUSES_S)

    def count(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran, pauses
        ran += 1
        pauses = iter(RECONNECT_PAUSES_S)
        if on_trial is not None:
            on_trial(study, trial)

    while True:
        try:
            run_queue(jobs, poll_s=poll_s, on_trial=count)
            return ran
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            print(f"worker {os.getpid()}: dropped a result, its trial was retried elsewhere ({exc})", file=sys.stderr)
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            pause = next(pauses, None)
            if pause is None:
                raise StorageError(
                    f"storage {storage_url!r} unreachable for {sum(RECONNECT_PAUSES_S):g} s ({_reason(exc)}); "
                    "start the worker again once it is back: planned trials are not lost"
                ) from exc
            print(
                f"worker {os.getpid()}: storage unreachable ({_reason(exc)}); trying again in {pause:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(pause)


def search_seconds(study: optuna.Study) -> float:
    """Wall-clock of a worked-off search: first trial start to last trial end (s), over all workers."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not trials:
        return 0.0
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    end = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    return (end - start).total_seconds()


def finish_planned_study(storage_url: str, study_name: str, *, device: str | None = None) -> StrategyResult:
    """Finish a worked-off planned study once: winner, retraining, result user attrs.

    ``tuning_s`` is the search's wall-clock, first trial start to last trial end, across workers.

    Raises:
        ConfigError: the study does not exist, has no recipe, still has trials waiting or
            running (finish after the workers have left), or none of its trials completed.
        StorageError: the storage cannot be reached.
    """
    storage = open_storage(storage_url)
    job = load_planned_job(storage, study_name, device=device)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=job.strategy.sampler(job.task))
    progress = queue_progress(study)
    if not progress.done:
        raise ConfigError(
            f"study {study_name!r} is not worked off yet ({progress.waiting} waiting, {progress.running} running); "
            "run `optuna-deelbo finish` after the workers have left"
        )
    if progress.complete == 0:
        raise ConfigError(
            f"study {study_name!r}: none of its {progress.finished} trials completed "
            f"({progress.pruned} pruned, {progress.failed} failed); see the trials' failure:reason user attrs"
        )
    return job.strategy.finish(job.task, study, search_seconds(study))
