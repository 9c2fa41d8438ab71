"""The Optuna side: DEELBoSampler, fit, the strategies, the study lifecycle, the attr schema, storages and workers.

* :func:`fit` trains one configuration in an objective (MAP or DE-ELBo, by the study's sampler);
  :func:`report_learned` is the own-loop counterpart for :class:`~optuna_deelbo.DEELBo`.
* :mod:`~optuna_deelbo.tuning.attrs`: every trial / study user-attr key, and :func:`best_params`.
* :mod:`~optuna_deelbo.tuning.strategies`: what each search runs; the study lifecycle
  (:func:`compare`, :func:`run_strategy`, :func:`plan_compare`, :func:`finish_planned_study`, ...)
  runs it in a storage (:func:`open_storage`), in one process or many (:func:`run_worker`); a search
  whose every trial failed or was pruned raises :class:`SearchFailed`.
"""

from __future__ import annotations

from optuna_deelbo._errors import SearchFailed
from optuna_deelbo.tuning import attrs
from optuna_deelbo.tuning._batched import fit_deelbo_batched
from optuna_deelbo.tuning._checkpoints import Checkpointing, default_artifacts_dir, worker_checkpointing
from optuna_deelbo.tuning._fit import (
    RetrainResult,
    deelbo_objective,
    finish_deelbo_training,
    fit,
    fit_deelbo,
    fit_map,
    recalibrate_for_mean_weights,
    retrain,
    score_deelbo_run,
)
from optuna_deelbo.tuning._sampler import (
    DEELBoSampler,
    PlaceholderWarning,
    learned_names,
    report_learned,
    without_learned,
)
from optuna_deelbo.tuning._storage import DEFAULT_STORAGE, open_storage, serve_grpc_proxy
from optuna_deelbo.tuning._study import (
    IF_EXISTS,
    PlannedJob,
    StrategyResult,
    compare,
    create_strategy_study,
    finish_planned_study,
    finish_strategy,
    load_planned_job,
    parse_strategies,
    plan_compare,
    plan_strategy_study,
    refuse_existing,
    resume_strategy_study,
    run_strategy,
    search_seconds,
    study_name_for,
)
from optuna_deelbo.tuning._trial_queue import (
    PlannedStudy,
    QueueEmpty,
    QueueProgress,
    queue_progress,
    requeue_interrupted,
)
from optuna_deelbo.tuning._worker import DEFAULT_GRACE_PERIOD_S, DEFAULT_HEARTBEAT_S, run_worker
from optuna_deelbo.tuning.attrs import best_params, learned_params
from optuna_deelbo.tuning.strategies import get_strategy
from optuna_deelbo.tuning.strategies.tpe import suggest_regularization

__all__ = [
    "DEFAULT_GRACE_PERIOD_S",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_STORAGE",
    "IF_EXISTS",
    "Checkpointing",
    "DEELBoSampler",
    "PlaceholderWarning",
    "PlannedJob",
    "PlannedStudy",
    "QueueEmpty",
    "QueueProgress",
    "RetrainResult",
    "SearchFailed",
    "StrategyResult",
    "attrs",
    "best_params",
    "compare",
    "create_strategy_study",
    "deelbo_objective",
    "default_artifacts_dir",
    "finish_deelbo_training",
    "finish_planned_study",
    "finish_strategy",
    "fit",
    "fit_deelbo",
    "fit_deelbo_batched",
    "fit_map",
    "get_strategy",
    "learned_names",
    "learned_params",
    "load_planned_job",
    "open_storage",
    "parse_strategies",
    "plan_compare",
    "plan_strategy_study",
    "queue_progress",
    "recalibrate_for_mean_weights",
    "refuse_existing",
    "report_learned",
    "requeue_interrupted",
    "resume_strategy_study",
    "retrain",
    "run_strategy",
    "run_worker",
    "score_deelbo_run",
    "search_seconds",
    "serve_grpc_proxy",
    "study_name_for",
    "suggest_regularization",
    "without_learned",
    "worker_checkpointing",
]
