"""One study, many processes: plan it, run workers on its queue (through a storage or a gRPC proxy), finish it.

``optuna-deelbo compare --plan-only`` / ``worker`` / ``finish`` / ``proxy`` call these: :func:`plan_compare` (or
:func:`plan_strategy_study`) enqueues every planned trial, :func:`run_worker` works a queue off
(:class:`PlannedStudy`: retried trials first, each planned trial exactly once; :func:`requeue_interrupted`
hands an interrupted one back), :func:`finish_planned_study` picks the winner, :func:`queue_progress` and
:func:`search_seconds` say where a queue stands, :func:`serve_grpc_proxy` puts Optuna's gRPC proxy in front of a
database. Times are in seconds.
"""

from __future__ import annotations

from optuna_deelbo.tuning._checkpoints import worker_checkpointing
from optuna_deelbo.tuning._storage import serve_grpc_proxy
from optuna_deelbo.tuning._study import (
    PlannedJob,
    finish_planned_study,
    load_planned_job,
    plan_compare,
    plan_strategy_study,
    search_seconds,
)
from optuna_deelbo.tuning._trial_queue import (
    PlannedStudy,
    QueueEmpty,
    QueueProgress,
    queue_progress,
    requeue_interrupted,
)
from optuna_deelbo.tuning._worker import DEFAULT_GRACE_PERIOD_S, DEFAULT_HEARTBEAT_S, run_worker

__all__ = [
    "DEFAULT_GRACE_PERIOD_S",
    "DEFAULT_HEARTBEAT_S",
    "PlannedJob",
    "PlannedStudy",
    "QueueEmpty",
    "QueueProgress",
    "finish_planned_study",
    "load_planned_job",
    "plan_compare",
    "plan_strategy_study",
    "queue_progress",
    "requeue_interrupted",
    "run_worker",
    "search_seconds",
    "serve_grpc_proxy",
    "worker_checkpointing",
]
