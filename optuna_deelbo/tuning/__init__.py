"""The Optuna side: DEELBoSampler, fit, strategies, planned studies and workers, storages, compare."""

from __future__ import annotations

from optuna_deelbo.tuning._compare import parse_strategies, run_compare, study_name_for
from optuna_deelbo.tuning._fit import (
    RetrainResult,
    fit,
    fit_deelbo,
    fit_map,
    recalibrate_for_mean_weights,
    retrain,
    score_deelbo_run,
)
from optuna_deelbo.tuning._recipe import RECIPE_ATTR, RECIPE_VERSION, TaskRecipe
from optuna_deelbo.tuning._sampler import (
    LEARNED_ATTR_PREFIX,
    DEELBoSampler,
    PlaceholderWarning,
    best_params,
    learned_names,
    learned_params,
    without_learned,
)
from optuna_deelbo.tuning._storage import DEFAULT_STORAGE, POSTGRES_CONNECT_TIMEOUT_S, SQLITE_TIMEOUT_S, open_storage
from optuna_deelbo.tuning._trial_queue import (
    PLANNED_ATTR,
    PlannedStudy,
    QueueEmpty,
    QueueProgress,
    plan_study,
    queue_progress,
    requeue_interrupted,
    retried_numbers,
    run_queue,
)
from optuna_deelbo.tuning._worker import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_S,
    RECONNECT_PAUSES_S,
    PlannedJob,
    finish_planned_study,
    load_planned_job,
    plan_strategy_study,
    run_worker,
    search_seconds,
)

__all__ = [
    "DEFAULT_GRACE_PERIOD_S",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_STORAGE",
    "LEARNED_ATTR_PREFIX",
    "PLANNED_ATTR",
    "POSTGRES_CONNECT_TIMEOUT_S",
    "RECIPE_ATTR",
    "RECIPE_VERSION",
    "RECONNECT_PAUSES_S",
    "SQLITE_TIMEOUT_S",
    "DEELBoSampler",
    "PlaceholderWarning",
    "PlannedJob",
    "PlannedStudy",
    "QueueEmpty",
    "QueueProgress",
    "RetrainResult",
    "TaskRecipe",
    "best_params",
    "finish_planned_study",
    "fit",
    "fit_deelbo",
    "fit_map",
    "learned_names",
    "learned_params",
    "load_planned_job",
    "open_storage",
    "parse_strategies",
    "plan_strategy_study",
    "plan_study",
    "queue_progress",
    "recalibrate_for_mean_weights",
    "requeue_interrupted",
    "retrain",
    "retried_numbers",
    "run_compare",
    "run_queue",
    "run_worker",
    "score_deelbo_run",
    "search_seconds",
    "study_name_for",
    "without_learned",
]
