"""Planned studies: every trial is enqueued when the study is created; workers only take them.

A strategy's configurations (a grid's points, or ``n`` free slots that TPE fills when a worker
takes one) are enqueued as WAITING trials when its study is created (:func:`plan_study`).
:class:`PlannedStudy` is an ``optuna.Study`` whose ``ask()`` only pops a WAITING trial (the
storage flips WAITING -> RUNNING under a row lock, so two workers never get the same one) and
never creates a new trial; :func:`run_queue` drives Optuna's own ``optimize`` loop (heartbeat
thread, ``fail_stale_trials``, ``tell``, callbacks) until the queue is empty. Hence with any
number of processes every planned trial runs exactly once; a trial whose process died is failed
by the heartbeat check and queued again by ``RetryHeartbeatStaleTrialCallback`` (system attrs
``failed_trial``, ``retry_history``), which replaces it rather than adding a configuration.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._interrupts import signals_held
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._optuna_internals import (
    clear_trials_cache,
    heartbeat_enabled,
    study_id,
    study_storage,
    trial_id,
)

__all__ = [
    "PlannedStudy",
    "QueueEmpty",
    "QueueProgress",
    "plan_study",
    "queue_progress",
    "requeue_interrupted",
    "retried_numbers",
    "run_queue",
    "trial_seconds",
]


Objective = Callable[[optuna.trial.Trial], float]


class QueueEmpty(Exception):
    """``PlannedStudy.ask()`` found no WAITING trial left to take."""


class PlannedStudy(optuna.Study):
    """A study whose :meth:`ask` only takes enqueued (WAITING) trials and never creates one.

    Build it like ``optuna.Study(study_name=..., storage=..., sampler=..., pruner=...)`` on an
    existing study; ``optimize`` then raises :class:`QueueEmpty` once the queue is drained.
    It remembers the trials it took, so that a run stopped between taking a trial and Optuna's own
    ``try`` around the objective fails them (:meth:`fail_taken`) rather than leaving them RUNNING.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken: list[int] = []  # trial ids this object took (flipped WAITING -> RUNNING)

    def ask(self, fixed_distributions: dict[str, BaseDistribution] | None = None) -> optuna.Trial:
        """Take the oldest WAITING trial (atomically), or raise :class:`QueueEmpty`."""
        if fixed_distributions:
            raise ConfigError("a planned study's trials carry their own parameters; fixed_distributions is not used")
        clear_trials_cache(self)  # as Study.ask: see other workers' trials
        taken = self._pop_waiting_trial_id()
        if taken is None:
            raise QueueEmpty(self.study_name)
        return optuna.Trial(self, taken)

    def _pop_waiting_trial_id(self) -> int | None:
        """The oldest WAITING retry (``failed_trial`` system attr) first, then the oldest WAITING trial.

        A retry takes the place of the trial it replaces: run first, it leaves the trials after it
        seeing the finished trials they would have seen without the interruption.

        On a storage with heartbeats the trial beats *before* it is flipped: a trial with no heartbeat
        at all is never taken for dead, so one flipped just before the database went away (the flip's
        reply lost, or the next call refused) would stay RUNNING for ever and every worker would wait
        for it (seen on CI: a PostgreSQL restart mid-study, four workers polling past 300 s).
        """
        storage = study_storage(self)
        beats = heartbeat_enabled(storage)
        waiting = storage.get_all_trials(study_id(self), deepcopy=False, states=(TrialState.WAITING,))
        for trial in sorted(waiting, key=lambda t: ("failed_trial" not in t.system_attrs, t.number)):
            if beats:  # a beat on a trial another worker takes first only makes its heartbeat a moment newer
                storage.record_heartbeat(trial_id(trial))  # type: ignore[attr-defined]
            try:
                with signals_held():  # taken and remembered, or neither: fail_taken then finds it
                    if storage.set_trial_state_values(trial_id(trial), state=TrialState.RUNNING):
                        self._taken.append(trial_id(trial))
                        return trial_id(trial)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def fail_taken(self) -> int:
        """Mark FAIL the trials this object took that are still RUNNING; returns how many.

        For a run that stops (Ctrl-C, SIGTERM, an error outside the objective): Optuna fails a trial
        whose objective raised, but not one taken just before its ``try``. Trials other workers took
        are left alone. Without heartbeats (``compare``) ``--resume`` queues a retry of each failed one;
        on a storage with heartbeats its stale-trial callback runs on each, as on a trial taken for dead
        (a worker's ``RetryHeartbeatStaleTrialCallback`` queues the retry that the other workers run).
        """
        storage = study_storage(self)
        failed: list[int] = []
        for taken in self._taken:
            if storage.get_trial(taken).state != TrialState.RUNNING:
                continue
            try:
                if storage.set_trial_state_values(taken, state=TrialState.FAIL):
                    failed.append(taken)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        self._taken = [t for t in self._taken if storage.get_trial(t).state == TrialState.RUNNING]
        if heartbeat_enabled(storage) and (callback := storage.get_heartbeat_stale_trial_callback()) is not None:  # type: ignore[attr-defined]
            for taken in failed:
                callback(self, copy.deepcopy(storage.get_trial(taken)))
        return len(failed)

    @classmethod
    def of(cls, study: optuna.Study, storage: optuna.storages.BaseStorage) -> PlannedStudy:
        """The same study (name, sampler, pruner) in ``storage`` (the one it was opened with), as a PlannedStudy."""
        return cls(study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=study.pruner)


def plan_study(study: optuna.Study, planned: Sequence[Mapping[str, Any]]) -> None:
    """Enqueue ``planned`` (one dict of fixed parameters per trial; ``{}`` = a free slot the sampler fills)."""
    if not planned:
        raise ConfigError(f"study {study.study_name!r}: no trial planned")
    for params in planned:
        study.enqueue_trial(dict(params))
    study.set_user_attr(A.PLANNED, len(planned))


def trial_seconds(trials: Sequence[FrozenTrial]) -> float:
    """Wall-clock the finished trials took (s), from their start and completion times."""
    total = 0.0
    for t in trials:
        if t.datetime_start is not None and t.datetime_complete is not None:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials some later trial retries (their failure is replaced, not counted)."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(int(n) for n in trial.system_attrs.get("retry_history", ()))
        if "failed_trial" in trial.system_attrs:
            numbers.add(int(trial.system_attrs["failed_trial"]))
    return numbers


def requeue_interrupted(study: optuna.Study, *, fail_running: bool = True) -> int:
    """Continue a study whose process is gone: fail its RUNNING trials, queue a retry of each failed one.

    For a study no other process is working on (``optuna-deelbo compare --resume``), with
    ``fail_running``: a trial left RUNNING by a killed process is marked FAIL. Then every FAIL
    trial that no later trial retries gets a WAITING retry with its parameters and the system attrs ``failed_trial`` /
    ``retry_history`` that Optuna's ``RetryFailedTrialCallback`` writes, so
    :func:`queue_progress` counts it as replaced. Returns the number of retries queued.
    """
    storage = study_storage(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if fail_running else ():
        storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    queued = 0
    for trial in trials:
        if trial.state != TrialState.FAIL or trial.number in retried:
            continue
        system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
        system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                system_attrs=system_attrs,
            )
        )
        queued += 1
    return queued


@dataclass(frozen=True)
class QueueProgress:
    """Where a planned study stands.

    Attributes:
        planned: trials enqueued at creation.
        waiting: enqueued, not yet taken.
        running: taken, not yet finished.
        complete: finished trials.
        pruned: pruned trials (diverged, or skipped by their strategy).
        failed: failed and not retried.
        retried: failed trials (process died) that a later trial replaces.
        skipped: pruned trials their strategy never trained (user attr ``skipped``).
    """

    planned: int
    waiting: int
    running: int
    complete: int
    pruned: int
    failed: int
    retried: int
    skipped: int = 0

    @property
    def trained(self) -> int:
        """Finished trials that trained (the search's cost in runs): :attr:`finished` less the skipped."""
        return self.finished - self.skipped

    @property
    def finished(self) -> int:
        """Planned configurations that have an outcome (complete, pruned or failed for good)."""
        return self.complete + self.pruned + self.failed

    @property
    def done(self) -> bool:
        """Nothing waiting or running: no worker will change this study any more."""
        return self.waiting == 0 and self.running == 0


def queue_progress(study: optuna.Study) -> QueueProgress:
    """Count a planned study's trials by state (see :class:`QueueProgress`)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)

    def count(state: TrialState) -> int:
        return sum(t.state == state for t in trials)

    failed = [t for t in trials if t.state == TrialState.FAIL]
    return QueueProgress(
        planned=int(study.user_attrs.get(A.PLANNED, 0)),
        waiting=count(TrialState.WAITING),
        running=count(TrialState.RUNNING),
        complete=count(TrialState.COMPLETE),
        pruned=count(TrialState.PRUNED),
        failed=sum(t.number not in retried for t in failed),
        retried=sum(t.number in retried for t in failed),
        skipped=sum(t.state == TrialState.PRUNED and bool(t.user_attrs.get(A.SKIPPED)) for t in trials),
    )


def run_queue(
    jobs: Sequence[tuple[PlannedStudy, Objective]],
    *,
    wait_for_running: bool = True,
    poll_s: float = 1.0,
    show_progress_bar: bool = False,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> int:
    """Work through the queues of ``jobs`` in order until none has anything left to run.

    Each study's queue is drained before the next one's; then, if any study still has
    RUNNING trials on a storage with heartbeats (their process may die and the trial come
    back as a retry), the worker polls every ``poll_s`` seconds (each poll fails stale trials
    and takes their retries) until every study is done. Exceptions from an objective
    propagate, as from ``optimize`` (the trial is marked failed first); whatever stops the run, the
    trials this process took and did not finish are marked failed (:meth:`PlannedStudy.fail_taken`).

    Args:
        jobs: ``(study, objective)`` pairs.
        wait_for_running: poll for retries while other processes run trials (see above).
        show_progress_bar: Optuna's bar over each study's queue.
        on_trial: called after every trial this process finished.

    Returns:
        The number of trials this process ran.
    """
    ran = 0

    def count(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        if on_trial is not None:
            on_trial(study, trial)

    try:
        while True:
            before = ran
            for study, objective in jobs:
                while True:
                    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
                    try:
                        study.optimize(
                            objective,
                            n_trials=waiting if show_progress_bar and waiting else None,
                            callbacks=[count],
                            show_progress_bar=show_progress_bar and waiting > 0,
                        )
                    except QueueEmpty:
                        break
            if ran > before:
                continue  # a pass that ran something: look again (retries may have been queued meanwhile)
            heartbeats = all(heartbeat_enabled(study_storage(study)) for study, _ in jobs)
            if not (wait_for_running and heartbeats):
                return ran
            if all(queue_progress(study).running == 0 for study, _ in jobs):
                return ran
            time.sleep(poll_s)
    except BaseException:  # stopped: no trial this process took stays RUNNING
        for study, _ in jobs:
            study.fail_taken()
        raise
