"""``optuna-deelbo worker``: work off planned studies' queues, on any number of processes, surviving outages.

The study is planned once (:func:`~optuna_deelbo.tuning.workers.plan_strategy_study`, ``compare --plan-only``) and
finished once (:func:`~optuna_deelbo.tuning.workers.finish_planned_study`, ``optuna-deelbo finish``): both live in the
study lifecycle (:mod:`optuna_deelbo.tuning`). In between, :func:`run_worker` (on any number of
processes and machines sharing the storage) rebuilds each study's task from its stored built-in task and
takes planned trials until the queue is empty (``run_queue``, tuning/_trial_queue.py). Its storage has
heartbeats: a trial whose worker died is failed once ``grace_period`` has passed and queued again
(``RetryHeartbeatStaleTrialCallback``); the retry resumes from the dead trial's newest checkpoint. A
worker leaves only when nothing is waiting or running.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError, StorageError
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.task._stored import BuiltinTask
from optuna_deelbo.tuning._storage import is_grpc_url, open_storage
from optuna_deelbo.tuning._study import load_planned_job
from optuna_deelbo.tuning._trial_queue import PlannedStudy, run_queue

__all__ = [
    "DEFAULT_GRACE_PERIOD_S",
    "DEFAULT_HEARTBEAT_S",
    "RECONNECT_PAUSES_S",
    "run_worker",
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
        if _grpc_unavailable(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _grpc_unavailable(exc: BaseException) -> bool:
    """A gRPC call that failed because the storage proxy is down or unreachable (``StatusCode.UNAVAILABLE``)."""
    code = getattr(exc, "code", None)
    if not callable(code) or type(exc).__module__.split(".")[0] != "grpc":
        return False
    try:
        return getattr(code(), "name", None) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    except Exception:
        return False


def _reason(exc: BaseException) -> str:
    text = str(exc.__cause__ or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
        storage_url: the shared RDB storage (PostgreSQL for many machines, SQLite for one), or
            ``grpc://host:port``: a gRPC storage proxy in front of it (``optuna-deelbo proxy``; no heartbeats).
        study_names: studies created by :func:`~optuna_deelbo.tuning.workers.plan_strategy_study`, worked off in order.
        device: where this worker trains (``None`` = CUDA when present).
        heartbeat_interval: see :func:`~optuna_deelbo.tuning.open_storage`.
        grace_period: see :func:`~optuna_deelbo.tuning.open_storage`.
        max_retry: see :func:`~optuna_deelbo.tuning.open_storage`.
        artifacts: overrides the stored checkpoint directory (same store, other mount point).
        poll_s: how often a worker with nothing to take looks for retries of dead trials.
        on_trial: called after every trial this worker finished.

    Raises:
        StorageError: the storage cannot be reached. ConfigError: a study does not exist or
            has no stored built-in task, or a heartbeat setting is bad.
    """
    if not study_names:
        raise ConfigError("no study given: pass at least one --study NAME")
    if is_grpc_url(storage_url):
        print(
            f"worker {os.getpid()}: through the gRPC storage proxy there are no heartbeats (Optuna's proxy has none): "
            "a trial whose worker dies stays RUNNING; once the workers have left, `optuna-deelbo compare --resume` "
            "with the plan's settings runs it",
            file=sys.stderr,
            flush=True,
        )
        storage = open_storage(storage_url)
    else:
        storage = open_storage(
            storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry
        )
    tasks: dict[BuiltinTask, TaskSpec] = {}  # built once: a join retried after an outage does not pretrain again

    def join() -> list[Job]:
        jobs = []
        for name in dict.fromkeys(study_names):
            job = load_planned_job(storage, name, device=device, artifacts=artifacts, tasks=tasks)
            study = PlannedStudy(
                study_name=name, storage=storage, sampler=job.strategy.sampler(job.task), pruner=job.strategy.pruner()
            )
            jobs.append((study, job.strategy.objective(job.task)))
        return jobs

    return _run_surviving_outages(join, storage_url, poll_s=poll_s, on_trial=on_trial)


Job = tuple[PlannedStudy, Callable[[optuna.Trial], float]]


def _run_surviving_outages(
    join: Callable[[], list[Job]],
    storage_url: str,
    *,
    poll_s: float,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None,
) -> int:
    """``join()`` the studies, then :func:`run_queue`, again after each storage outage (see
    :data:`RECONNECT_PAUSES_S`); returns the trials run here. An outage while joining (a worker
    still pretraining when the database went away) is waited out like one while training.

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

    jobs: list[Job] | None = None
    while True:
        try:
            if jobs is None:
                jobs = join()
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
