"""The user-attr schema: every key this package writes on a trial or a study, and the readers of learned values.

Nothing else in the package spells a key: writers and readers (``od.fit``, the strategies, the
study lifecycle, the reports, the dashboard notes, the CLI) go through these names, so renaming
one key cannot break a report silently. The values are what optuna-dashboard shows.

Trial user attrs (floats unless noted; times in seconds, losses in nats per example):

* :data:`MODE` (str: ``"deelbo"`` / ``"map"``), :data:`KAPPA` (DE-ELBo likelihood weight ``D / N``)
* ``learned:<name>`` (:func:`learned_key`): :data:`LEARNED_LAMBDA`, :data:`LEARNED_WEIGHT_DECAY`,
  :data:`LEARNED_TAU`, :data:`LEARNED_SIGMA`, :data:`LEARNED_LAMBDA_LAYERS` (dict, per layer)
* :data:`TRAIN_LOSS`, :data:`TRAIN_NLL` (final-epoch means), :data:`TRAIN_BEST_STEP`,
  :data:`TRAIN_STOPPED_STEP`, :data:`TRAIN_LOSS_AT_BEST` (early stopping)
* :data:`SELECT_RULE` (str) and ``select:<rule>`` (:func:`select_key`): the DE-ELBo selection rule and score
* :data:`VAL_NLL`, :data:`VAL_ACCURACY` (MAP, 20 % split); :data:`TEST_NLL`, :data:`TEST_ACCURACY`
* :data:`TIME_TRAIN_S` (with :data:`TIME_RECALIBRATE_S`), :data:`TIME_TRIAL_S`, :data:`TIME_SELECT_S`,
  :data:`TIME_TEST_EVAL_S`
* :data:`FAILURE_REASON` (str),
  :data:`SKIPPED` (bool: pruned by its strategy without training, e.g. ``deelbo-descend``'s stop or a spent
  ``tpe-budget``; not counted as a trial the search ran)
* checkpoints: :data:`CHECKPOINT_ARTIFACT` (str), :data:`CHECKPOINT_STEP` (int), :data:`RESUMED_STEP` (int),
  :data:`RESUMED_TRIAL` (int), :data:`RESUMED_ARTIFACT` (str), :data:`CHECKPOINT_RESUME_ERROR` (str)
* :data:`SAVED_MODEL_DIR` (str): where the Hugging Face integration saved the trial's model
* :data:`BATCHED_MEMBERS` (int), :data:`BATCHED_WITH` (list of int): the trial trained in a batched search
  (:data:`TIME_TRAIN_S` is then its share, the batch's wall-clock over the members); :data:`HALVING_RUNGS`
  (``[[step, training loss], ...]``: the losses successive halving ranked it by, ``deelbo-halving``)

Trial system attrs, the series (:data:`SERIES`; read with :func:`series`, written with :func:`set_trial_attrs`):
:data:`LEARNED_TRACE` (``[[step, lambda, tau, sigma], ...]``, DE-ELBo) and :data:`LAMBDA_TRAJECTORY`
(``[[step, weight decay], ...]`` of a schedule). Not user attrs since 0.4: optuna-dashboard prints every user
attr on one line, and a 100-row series made the trials page 9,000 px wide; the report's and the dashboard's
trajectory figure draws them. :func:`series` also reads a 0.3 study, which has them as user attrs.

Study user attrs: :data:`STRATEGY`, :data:`DESCRIPTION`, :data:`TASK` (name, N, prior, steps),
:data:`PLAN` (what a resumed study must match), :data:`PLANNED` (int), :data:`BUILTIN_TASK` (the JSON a worker
rebuilds the task from), :data:`BUDGET_S` (``tpe-budget``'s wall-clock budget), and once finished
:data:`TIME_TUNING_S`, :data:`TIME_RETRAIN_S`,
:data:`TIME_TOTAL_S`, :data:`TEST_ACCURACY`, :data:`TEST_NLL`, :data:`BEST_TRIAL` (int), :data:`BEST_PARAMS` (dict);
:data:`BEST_MODEL_DIR` (dict) from the Hugging Face integration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from optuna_deelbo.tuning._optuna_internals import study_storage, trial_id

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = [
    "BATCHED_MEMBERS",
    "BATCHED_WITH",
    "BEST_MODEL_DIR",
    "BEST_PARAMS",
    "BEST_TRIAL",
    "BUDGET_S",
    "BUILTIN_TASK",
    "CHECKPOINT_ARTIFACT",
    "CHECKPOINT_RESUME_ERROR",
    "CHECKPOINT_STEP",
    "DESCRIPTION",
    "FAILURE_REASON",
    "HALVING_RUNGS",
    "KAPPA",
    "LAMBDA_TRAJECTORY",
    "LEARNED_LAMBDA",
    "LEARNED_LAMBDA_LAYERS",
    "LEARNED_PREFIX",
    "LEARNED_SIGMA",
    "LEARNED_TAU",
    "LEARNED_TRACE",
    "LEARNED_WEIGHT_DECAY",
    "MODE",
    "PLAN",
    "PLANNED",
    "RESUMED_ARTIFACT",
    "RESUMED_STEP",
    "RESUMED_TRIAL",
    "SAVED_MODEL_DIR",
    "SELECT_PREFIX",
    "SELECT_RULE",
    "SERIES",
    "SKIPPED",
    "STRATEGY",
    "TASK",
    "TEST_ACCURACY",
    "TEST_NLL",
    "TIME_RECALIBRATE_S",
    "TIME_RETRAIN_S",
    "TIME_SELECT_S",
    "TIME_TEST_EVAL_S",
    "TIME_TOTAL_S",
    "TIME_TRAIN_S",
    "TIME_TRIAL_S",
    "TIME_TUNING_S",
    "TRAIN_BEST_STEP",
    "TRAIN_LOSS",
    "TRAIN_LOSS_AT_BEST",
    "TRAIN_NLL",
    "TRAIN_STOPPED_STEP",
    "VAL_ACCURACY",
    "VAL_NLL",
    "best_params",
    "learned_floats",
    "learned_key",
    "learned_params",
    "prefixed_learned",
    "select_key",
    "series",
    "set_trial_attrs",
]

# --- trial attrs -------------------------------------------------------------------------------------------
MODE = "mode"
KAPPA = "kappa"
LEARNED_PREFIX = "learned:"


def learned_key(name: str) -> str:
    """``"learned:<name>"``: the trial attr of a value DE-ELBo learned (``weight_decay``, ``lambda``, ...)."""
    return LEARNED_PREFIX + name


LEARNED_LAMBDA = learned_key("lambda")
LEARNED_WEIGHT_DECAY = learned_key("weight_decay")
LEARNED_TAU = learned_key("tau")
LEARNED_SIGMA = learned_key("sigma")
LEARNED_LAMBDA_LAYERS = learned_key("lambda_layers")
LEARNED_TRACE = learned_key("trace")
TRAIN_LOSS = "train:loss"
TRAIN_NLL = "train:nll"
TRAIN_BEST_STEP = "train:best_step"
TRAIN_STOPPED_STEP = "train:stopped_step"
TRAIN_LOSS_AT_BEST = "train:loss_at_best"
SELECT_PREFIX = "select:"
SELECT_RULE = SELECT_PREFIX + "rule"
VAL_NLL = "val:nll"
VAL_ACCURACY = "val:accuracy"
TEST_NLL = "test:nll"
TEST_ACCURACY = "test:accuracy"
TIME_TRAIN_S = "time:train_s"
TIME_TRIAL_S = "time:trial_s"
TIME_SELECT_S = "time:select_s"
TIME_TEST_EVAL_S = "time:test_eval_s"
#: Of :data:`TIME_TRAIN_S`: recomputing BatchNorm statistics for the mean weights after a DE-ELBo run.
TIME_RECALIBRATE_S = "time:recalibrate_s"
LAMBDA_TRAJECTORY = "lambda:trajectory"
FAILURE_REASON = "failure:reason"
SKIPPED = "skipped"
CHECKPOINT_ARTIFACT = "checkpoint:artifact_id"
CHECKPOINT_STEP = "checkpoint:step"
CHECKPOINT_RESUME_ERROR = "checkpoint:resume_error"
RESUMED_STEP = "resumed_from_step"
RESUMED_TRIAL = "resumed_from_trial"
RESUMED_ARTIFACT = "resumed_from_artifact"
#: Where a Hugging Face trial's model was saved (``DEELBoTrainer(keep_best=True)``; str).
SAVED_MODEL_DIR = "saved:model_dir"
#: How many learning rates trained together in one batched model with this trial (int; absent: on its own).
BATCHED_MEMBERS = "batched:members"
#: The trial numbers of that batch, this one included (list of int).
BATCHED_WITH = "batched:with"
#: ``[[step, rung loss], ...]``: the training losses a successive-halving search ranked this trial by, one per
#: rung it reached (``deelbo-halving``; nats per example, lower ranks first).
HALVING_RUNGS = "halving:rungs"

# --- study attrs -------------------------------------------------------------------------------------------
STRATEGY = "strategy"
DESCRIPTION = "description"
TASK = "task"
PLAN = "plan"
PLANNED = "planned_trials"
#: The stored :class:`~optuna_deelbo.task.BuiltinTask` (key kept from 0.2, so older planned studies load).
BUILTIN_TASK = "task_recipe"
BUDGET_S = "budget_s"
TIME_TUNING_S = "time:tuning_s"
TIME_RETRAIN_S = "time:retrain_s"
TIME_TOTAL_S = "time:total_s"
BEST_TRIAL = "best_trial"
BEST_PARAMS = "best_params"
#: ``{"trial": number, "path": folder}``: the best trial's saved model (``DEELBoTrainer(keep_best=True)``).
BEST_MODEL_DIR = "best_model_dir"


#: The keys written as trial system attrs (long series), not user attrs: see the module docstring.
SERIES: frozenset[str] = frozenset({LEARNED_TRACE, LAMBDA_TRAJECTORY})


def set_trial_attrs(trial: optuna.trial.BaseTrial, attrs: Mapping[str, Any]) -> None:
    """Write a run's attrs on its trial: each :data:`SERIES` key as a system attr, every other as a user attr.

    A trial with no storage behind it (``optuna.trial.FixedTrial``) gets them all as user attrs.
    """
    for key, value in attrs.items():
        if key in SERIES and isinstance(trial, optuna.trial.Trial):
            study_storage(trial.study).set_trial_system_attr(trial_id(trial), key, value)
        else:
            trial.set_user_attr(key, value)


def series(trial: FrozenTrial, key: str) -> list[Any] | None:
    """A :data:`SERIES` attr of a finished trial (``[[step, ...], ...]``), ``None`` if it has none.

    Reads the system attr, or the user attr a 0.3 study wrote.
    """
    if key not in SERIES:
        raise KeyError(f"{key!r} is not a series attr; the series are {sorted(SERIES)}")
    value = trial.system_attrs.get(key, trial.user_attrs.get(key))
    return list(value) if value else None


def select_key(rule: str) -> str:
    """``"select:<rule>"``: the trial attr holding a selection rule's score."""
    return SELECT_PREFIX + rule


def prefixed_learned(values: Mapping[str, Any]) -> dict[str, Any]:
    """:meth:`DEELBo.learned_values <optuna_deelbo.DEELBo.learned_values>` as trial attrs.

    The learned values get the ``learned:`` prefix; ``mode`` and ``kappa`` keep their names.
    """
    return {k if k in (MODE, KAPPA) else learned_key(k): v for k, v in values.items()}


def learned_floats(trial: FrozenTrial) -> dict[str, float]:
    """A trial's ``learned:*`` attrs that are numbers (not traces or per-layer dicts), keys with the prefix."""
    return {k: v for k, v in trial.user_attrs.items() if k.startswith(LEARNED_PREFIX) and isinstance(v, float)}


def learned_params(trial: FrozenTrial) -> dict[str, Any]:
    """``trial.params`` with each learned name's placeholder replaced by the value the trial learned.

    A name is replaced when the trial has a ``learned:<name>`` user attr (``od.fit`` and
    ``od.report_learned`` write ``learned:weight_decay``); other params are as sampled.
    """
    params = dict(trial.params)
    for name in params:
        key = learned_key(name)
        if key in trial.user_attrs:
            params[name] = trial.user_attrs[key]
    return params


def best_params(study: Study) -> dict[str, Any]:
    """What ``study.best_params`` would be if the learned values were params: :func:`learned_params` of the best trial.

    Under :class:`~optuna_deelbo.DEELBoSampler` ``study.best_params["weight_decay"]`` is the
    placeholder the objective was handed (the distribution's lower bound); this gives the learned one.
    """
    return learned_params(study.best_trial)
