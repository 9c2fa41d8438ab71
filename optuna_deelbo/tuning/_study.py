"""The study lifecycle: create (or resume / overwrite), plan for workers, run, finish, and the study's attrs.

Every way a search runs goes through here: :func:`compare` (``optuna-deelbo compare``),
:func:`plan_compare` (``compare --plan-only``), ``optuna-deelbo worker`` (:func:`load_planned_job`)
and ``optuna-deelbo finish`` (:func:`finish_planned_study`). A :class:`~optuna_deelbo.tuning.strategies.Strategy`
only says what to search (sampler, planned trials, objective, how to retrain); this module owns
the study: its name, its user attrs (:mod:`optuna_deelbo.tuning.attrs`), whether an existing one
may be resumed, and the result once it is worked off.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_deelbo._errors import ConfigError, SearchFailed, StudyExists
from optuna_deelbo._validation import shown
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.task._stored import BuiltinTask
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._checkpoints import worker_checkpointing
from optuna_deelbo.tuning._sampler import DEELBoSampler
from optuna_deelbo.tuning._storage import open_storage
from optuna_deelbo.tuning._trial_queue import (
    PlannedStudy,
    plan_study,
    queue_progress,
    requeue_interrupted,
    trial_seconds,
)
from optuna_deelbo.tuning.strategies import (
    STRATEGY_NAMES,
    DEELBoStrategy,
    Strategy,
    TPEBudgetStrategy,
    get_strategy,
)

__all__ = [
    "IF_EXISTS",
    "PlannedJob",
    "StrategyResult",
    "compare",
    "create_strategy_study",
    "finish_planned_study",
    "finish_strategy",
    "load_planned_job",
    "parse_strategies",
    "plan_compare",
    "plan_strategy_study",
    "refuse_existing",
    "reporting_overhead_s",
    "resume_strategy_study",
    "run_strategy",
    "search_seconds",
    "study_name_for",
]

#: What to do when the storage already holds a study of that name: refuse (default), continue it
#: if it was planned with the same settings, or delete and replace it.
IF_EXISTS: tuple[str, ...] = ("error", "resume", "overwrite")

OnTrial = Callable[[optuna.Study, FrozenTrial], None]


# --- names and existing studies -----------------------------------------------------------------------------
def parse_strategies(spec: str | Sequence[str]) -> list[str]:
    """``"deelbo,grid"`` or ``["deelbo", "grid"]`` -> checked, de-duplicated names in order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no strategy given; choose from {', '.join(STRATEGY_NAMES)}")
    for name in names:
        if name not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {shown(name)}; choose from {', '.join(STRATEGY_NAMES)}")
    return list(dict.fromkeys(names))


def study_name_for(task: TaskSpec, strategy: str) -> str:
    """The study name a strategy's search gets: ``<task>/<prior>/<strategy>``."""
    return f"{task.name}/{task.prior}/{strategy}"


def _study_exists(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


def refuse_existing(storage: optuna.storages.BaseStorage, study_names: Sequence[str]) -> None:
    """Raise :class:`StudyExists` (naming ``--resume`` and ``--overwrite``) if any of ``study_names`` is taken."""
    for name in study_names:
        if _study_exists(storage, name):
            n = len(optuna.load_study(study_name=name, storage=storage).trials)
            raise StudyExists(
                f"study {name!r} already exists in this storage ({n} trials); nothing was changed. "
                "--resume (if_exists='resume') continues it, --overwrite (if_exists='overwrite') replaces it"
            )


def _differences(stored: Any, current: Any, path: str = "") -> list[str]:
    """``"key: stored -> now"`` for every leaf where two JSON-like values differ."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key), current.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if stored == current else [f"{path}: {stored!r} -> {current!r}"]


def _plan_signature(strategy: Strategy, task: TaskSpec) -> dict[str, Any]:
    """:meth:`Strategy.plan_signature` in the form it has after a round trip through the storage."""
    return json.loads(json.dumps(strategy.plan_signature(task)))


# --- create, resume, run, finish ------------------------------------------------------------------------------
def create_strategy_study(
    strategy: Strategy,
    task: TaskSpec,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    builtin: BuiltinTask | None = None,
    if_exists: str = "error",
) -> optuna.Study:
    """Create ``strategy``'s study with every planned trial enqueued and its study attrs written.

    Args:
        builtin: the built-in task ``task`` was built from, stored (:data:`~attrs.BUILTIN_TASK`) so that
            workers can rebuild it; ``None`` for a study one process runs.
        if_exists: a study of that name already in ``storage``: ``"error"`` refuses
            (:class:`StudyExists`, nothing touched), ``"resume"`` returns it ready to continue
            (:func:`resume_strategy_study`), ``"overwrite"`` deletes it and creates a new one.
    """
    if if_exists not in IF_EXISTS:
        raise ConfigError(f"unknown if_exists {if_exists!r}; choose one of {IF_EXISTS}")
    if _study_exists(storage, study_name):
        if if_exists == "resume":
            # A study planned for workers may have live RUNNING trials; heartbeats retry the dead
            # ones. A study one process runs has no one else: its RUNNING trials are dead.
            return resume_strategy_study(strategy, task, storage, study_name, fail_running=builtin is None)
        if if_exists == "error":
            refuse_existing(storage, [study_name])
        optuna.delete_study(study_name=study_name, storage=storage)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        sampler=strategy.sampler(task),
        pruner=strategy.pruner(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([strategy.metric_name])
    study.set_user_attr(A.STRATEGY, strategy.name)
    study.set_user_attr(A.DESCRIPTION, strategy.description)
    study.set_user_attr(A.TASK, {"name": task.name, "N": task.n_train, "prior": task.prior, "steps": task.steps})
    study.set_user_attr(A.PLAN, _plan_signature(strategy, task))
    if builtin is not None:
        study.set_user_attr(A.BUILTIN_TASK, builtin.to_json())
    plan_study(study, strategy.planned_params(task))
    return study


def resume_strategy_study(
    strategy: Strategy,
    task: TaskSpec,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    fail_running: bool = True,
) -> optuna.Study:
    """The existing study ``study_name``, its interrupted trials queued again (:func:`requeue_interrupted`).

    ``fail_running``: mark RUNNING trials failed first (no other process works on the study).

    Raises:
        StudyExists: it was not planned by this package, or with another strategy, task or budget
            (the differences are named).
    """
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=strategy.sampler(task), pruner=strategy.pruner()
    )
    stored = study.user_attrs.get(A.PLAN)
    if stored is None:
        raise StudyExists(
            f"study {study_name!r} was not planned by optuna-deelbo (no {A.PLAN!r} user attr), so it cannot "
            "be resumed; --overwrite replaces it, or use another --storage"
        )
    changed = _differences(stored, _plan_signature(strategy, task))
    if changed:
        raise StudyExists(
            f"study {study_name!r} was planned with another recipe ({'; '.join(changed[:4])}); resume it with "
            "the settings it was planned with, --overwrite replaces it, or use another --storage"
        )
    requeue_interrupted(study, fail_running=fail_running)
    return study


def run_strategy(
    strategy: Strategy,
    task: TaskSpec,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    show_progress_bar: bool = False,
    if_exists: str = "error",
    on_trial: OnTrial | None = None,
) -> StrategyResult:
    """Run ``strategy``'s search in this process as its own study in ``storage``, then finish it.

    ``if_exists`` as in :func:`create_strategy_study`; ``on_trial(study, trial)`` after every finished
    trial. A resumed study runs only what is missing: a finished one returns its stored result
    without training; otherwise the interrupted trials run again and the tuning wall-clock adds
    the trials finished before the interruption.
    """
    study = create_strategy_study(strategy, task, storage, study_name, if_exists=if_exists)
    done_before = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if done_before and A.TIME_TOTAL_S in study.user_attrs and queue_progress(study).done:
        return StrategyResult.from_study(study)
    start = time.perf_counter()
    strategy.work_off(PlannedStudy.of(study, storage), task, show_progress_bar=show_progress_bar, on_trial=on_trial)
    return finish_strategy(strategy, task, study, trial_seconds(done_before) + time.perf_counter() - start)


def reporting_overhead_s(trials: Sequence[FrozenTrial], best: FrozenTrial) -> float:
    """Seconds the trials spent evaluating the test set for reporting, except the chosen one's.

    A strategy that needs no retraining pays for one test evaluation (its chosen model's), as
    the retrained winner's is counted for the others; the rest is reporting, not tuning cost.
    """
    total = sum(float(t.user_attrs.get(A.TIME_TEST_EVAL_S, 0.0)) for t in trials)
    return total - float(best.user_attrs.get(A.TIME_TEST_EVAL_S, 0.0))


def search_failed(strategy: str, study: optuna.Study) -> SearchFailed:
    """The error for a study with no complete trial: how many finished, and the first one's reason."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    kept = f"the study {study.study_name!r} is kept in the storage (each trial's {A.FAILURE_REASON!r} user attr)"
    if not finished:
        return SearchFailed(f"strategy {strategy!r}: no trial finished; {kept}")
    first = min(finished, key=lambda t: t.number)
    reason = str(first.user_attrs.get(A.FAILURE_REASON) or f"{first.state.name.lower()}, no reason recorded")
    reason = " ".join(reason.split())
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    placeholders = study.sampler.learned if isinstance(study.sampler, DEELBoSampler) else frozenset()
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in first.params.items() if k not in placeholders
    )
    return SearchFailed(
        f"strategy {strategy!r}: all {len(finished)} trials failed or were pruned; the first ({params}): {reason}; "
        f"{kept}"
    )


def finish_strategy(strategy: Strategy, task: TaskSpec, study: optuna.Study, tuning_s: float) -> StrategyResult:
    """Pick the winner of a worked-off study, retrain it if the strategy does, write the study's result attrs.

    Args:
        tuning_s: wall-clock of the search (s), measured by whoever ran it.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise search_failed(strategy.name, study)
    best = min(complete, key=lambda t: float(t.value if t.value is not None else "inf"))
    if strategy.retrain_winner:
        outcome = strategy.retrain_best(task, best)
        retrain_s = outcome.seconds
        accuracy = outcome.test.accuracy if outcome.test else float("nan")
        nll = outcome.test.nll if outcome.test else float("nan")
    else:
        tuning_s -= reporting_overhead_s(study.trials, best)
        retrain_s = 0.0
        accuracy = float(best.user_attrs.get(A.TEST_ACCURACY, float("nan")))
        nll = float(best.user_attrs.get(A.TEST_NLL, float("nan")))
    result = StrategyResult(
        strategy=strategy.name,
        study_name=study.study_name,
        n_trials=queue_progress(study).trained,
        tuning_s=tuning_s,
        retrain_s=retrain_s,
        total_s=tuning_s + retrain_s,
        test_accuracy=accuracy,
        test_nll=nll,
        best_params={k: v for k, v in best.params.items() if k not in getattr(study.sampler, "learned", ())},
        learned=A.learned_floats(best),
    )
    result.write(study, best.number)
    return result


@dataclass
class StrategyResult:
    """One strategy's outcome on one task.

    Attributes:
        tuning_s: wall-clock of the whole search (s); retrain_s: retraining the winner on all N.
        total_s: ``tuning_s + retrain_s``.
        test_accuracy, test_nll: of the final model (NaN without a test set).
        learned: the winner's ``learned:*`` numbers (keys with the prefix).
    """

    strategy: str
    study_name: str
    n_trials: int
    tuning_s: float
    retrain_s: float
    total_s: float
    test_accuracy: float
    test_nll: float
    best_params: dict[str, Any]
    learned: dict[str, float] = field(default_factory=dict)

    def write(self, study: optuna.Study, best_trial: int) -> None:
        """Store the result as the study's user attrs (what :meth:`from_study` reads back)."""
        for key, value in {
            A.TIME_TUNING_S: self.tuning_s,
            A.TIME_RETRAIN_S: self.retrain_s,
            A.TIME_TOTAL_S: self.total_s,
            A.TEST_ACCURACY: self.test_accuracy,
            A.TEST_NLL: self.test_nll,
            A.BEST_TRIAL: best_trial,
            A.BEST_PARAMS: self.best_params,
        }.items():
            study.set_user_attr(key, value)

    @classmethod
    def from_study(cls, study: optuna.Study) -> StrategyResult:
        """The result :func:`run_strategy` returned, rebuilt from a finished study's user attrs.

        Raises:
            ConfigError: the study was not written by a finished strategy run.
        """
        attrs = study.user_attrs
        missing = [k for k in (A.STRATEGY, A.TIME_TOTAL_S, A.TEST_ACCURACY) if k not in attrs]
        if missing:
            raise ConfigError(
                f"study {study.study_name!r} is not a finished strategy run (missing {', '.join(missing)})"
            )
        trials = study.get_trials(deepcopy=False)
        best = next((t for t in trials if t.number == attrs.get(A.BEST_TRIAL)), None)
        return cls(
            strategy=str(attrs[A.STRATEGY]),
            study_name=study.study_name,
            n_trials=queue_progress(study).trained if A.PLANNED in attrs else len(trials),
            tuning_s=float(attrs.get(A.TIME_TUNING_S, math.nan)),
            retrain_s=float(attrs.get(A.TIME_RETRAIN_S, math.nan)),
            total_s=float(attrs[A.TIME_TOTAL_S]),
            test_accuracy=float(attrs[A.TEST_ACCURACY]),
            test_nll=float(attrs.get(A.TEST_NLL, math.nan)),
            best_params=dict(attrs.get(A.BEST_PARAMS) or {}),
            learned={} if best is None else A.learned_floats(best),
        )


# --- several strategies, in one process or planned for workers --------------------------------------------------
def _strategies(
    strategies: str | Sequence[str],
    tpe_trials: int | None,
    learning_rates: Sequence[float] | None,
    batched: str = "auto",
) -> list[Strategy]:
    return [
        get_strategy(n, tpe_trials=tpe_trials, learning_rates=learning_rates, batched=batched)
        for n in parse_strategies(strategies)
    ]


def compare(
    task: TaskSpec,
    strategies: str | Sequence[str],
    storage: optuna.storages.BaseStorage,
    *,
    tpe_trials: int | None = None,
    learning_rates: Sequence[float] | None = None,
    show_progress_bar: bool = False,
    if_exists: str = "error",
    on_trial: OnTrial | None = None,
    batched: str = "auto",
) -> list[StrategyResult]:
    """Run each strategy as its own study in ``storage``; return their results in order.

    ``batched``: whether the DE-ELBo search trains its learning rates as one batched model
    (:data:`~optuna_deelbo.tuning.strategies.BATCHED_MODES`; ``"auto"``: on a CUDA device).

    ``if_exists``: what to do with a study of the same name (see :func:`create_strategy_study`):
    ``"error"`` (default) refuses before anything runs, ``"resume"`` continues, ``"overwrite"`` replaces.
    ``learning_rates``: every strategy's grid (default ``LEARNING_RATES``). ``on_trial(study, trial)``:
    called after every trial finished here (the CLI prints a progress line).
    """
    built = _strategies(strategies, tpe_trials, learning_rates, batched)  # fail fast on bad options
    _check_budgets(built)
    if if_exists == "error":  # refuse before the first strategy trains, not after it
        refuse_existing(storage, [study_name_for(task, s.name) for s in built])
    results: list[StrategyResult] = []
    for strategy in built:
        if isinstance(strategy, TPEBudgetStrategy) and strategy.budget_s is None:
            strategy = strategy.with_budget(_deelbo_wall_clock(built, results))
        results.append(
            run_strategy(
                strategy,
                task,
                storage,
                study_name_for(task, strategy.name),
                show_progress_bar=show_progress_bar,
                if_exists=if_exists,
                on_trial=on_trial,
            )
        )
    return results


def _check_budgets(built: Sequence[Strategy]) -> None:
    """Refuse a ``tpe-budget`` without a budget and without a DE-ELBo search before it to take one from."""
    for i, strategy in enumerate(built):
        unbudgeted = isinstance(strategy, TPEBudgetStrategy) and strategy.budget_s is None
        if unbudgeted and not any(isinstance(s, DEELBoStrategy) for s in built[:i]):
            raise ConfigError(
                "tpe-budget takes its budget from the DE-ELBo search run before it: list deelbo (or "
                "deelbo-descend, deelbo-halving, deelbo-lr-free) before tpe-budget in --strategies"
            )


def _deelbo_wall_clock(built: Sequence[Strategy], results: Sequence[StrategyResult]) -> float:
    """The total wall-clock (s) of the first DE-ELBo search run so far (``results`` follow ``built``)."""
    return next(r.total_s for s, r in zip(built, results, strict=False) if isinstance(s, DEELBoStrategy))


def plan_strategy_study(
    strategy: Strategy,
    builtin: BuiltinTask,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    task: TaskSpec | None = None,
    if_exists: str = "error",
) -> optuna.Study:
    """Create ``strategy``'s study for workers: its trials queued and the built-in task stored.

    Args:
        task: ``builtin``'s task when the caller has built it already (else it is built here:
            the strategy's sampler and plan may depend on it).
        if_exists: as in :func:`create_strategy_study` (``"resume"`` keeps live RUNNING trials).
    """
    built = task if task is not None else builtin.build()[0]
    return create_strategy_study(strategy, built, storage, study_name, builtin=builtin, if_exists=if_exists)


def plan_compare(
    builtin: BuiltinTask,
    strategies: str | Sequence[str],
    storage: optuna.storages.BaseStorage,
    *,
    device: str | None = None,
    tpe_trials: int | None = None,
    learning_rates: Sequence[float] | None = None,
    if_exists: str = "error",
) -> list[optuna.Study]:
    """``compare --plan-only``: each strategy's study created with its trials queued; nothing trains.

    The task is built once (its pretraining decides the study names and the strategies' plans).
    """
    built = _strategies(strategies, tpe_trials, learning_rates)
    if any(isinstance(s, TPEBudgetStrategy) for s in built):
        raise ConfigError(
            "tpe-budget cannot be planned for workers: its budget is the DE-ELBo search's wall-clock, measured "
            "only once that search has run; run it with compare in one process (without --plan-only)"
        )
    task, _ = builtin.build(device)
    names = [study_name_for(task, s.name) for s in built]
    if if_exists == "error":
        refuse_existing(storage, names)
    return [
        plan_strategy_study(s, builtin, storage, name, task=task, if_exists=if_exists)
        for s, name in zip(built, names, strict=True)
    ]


@dataclass(frozen=True)
class PlannedJob:
    """What a worker rebuilt from a planned study: its strategy, built-in task and task (with checkpointing)."""

    study_name: str
    strategy: Strategy
    builtin: BuiltinTask
    task: TaskSpec


def _existing_study(storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    if not _study_exists(storage, study_name):
        names = sorted(optuna.get_all_study_names(storage))
        listed = ", ".join(repr(n) for n in names) if names else "none"
        raise ConfigError(
            f"study {study_name!r} does not exist in this storage (studies there: {listed}); "
            "create it first with `optuna-deelbo compare --plan-only`"
        )
    return optuna.load_study(study_name=study_name, storage=storage)


def load_planned_job(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    device: str | None = None,
    artifacts: str | Path | None = None,
    tasks: dict[BuiltinTask, TaskSpec] | None = None,
) -> PlannedJob:
    """Read a planned study's strategy and built-in task and build its task.

    Args:
        artifacts: overrides the stored checkpoint directory.
        tasks: a cache of tasks already built (several studies of one task share one pretraining).

    Raises:
        ConfigError: the study does not exist, or has no (valid) built-in task or strategy.
    """
    study = _existing_study(storage, study_name)
    attrs = study.user_attrs
    if A.BUILTIN_TASK not in attrs:
        raise ConfigError(
            f"study {study_name!r} has no stored built-in task (user attr {A.BUILTIN_TASK!r}): it was not created "
            "by `optuna-deelbo compare --plan-only` (or plan_strategy_study), so a worker cannot rebuild its task"
        )
    try:
        builtin = BuiltinTask.from_json(attrs[A.BUILTIN_TASK])
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"study {study_name!r}: bad stored built-in task: {exc}") from exc
    if A.STRATEGY not in attrs:
        raise ConfigError(f"study {study_name!r} has no {A.STRATEGY!r} user attr; it was not created by a strategy")
    plan = attrs.get(A.PLAN)
    lrs = plan.get("learning_rates") if isinstance(plan, dict) else None
    strategy = get_strategy(str(attrs[A.STRATEGY]), learning_rates=lrs)
    cache = tasks if tasks is not None else {}
    if builtin not in cache:
        cache[builtin] = builtin.build(device)[0]
    task = replace(cache[builtin], checkpointing=worker_checkpointing(builtin, artifacts))
    return PlannedJob(study_name=study_name, strategy=strategy, builtin=builtin, task=task)


def search_seconds(study: optuna.Study) -> float:
    """Wall-clock of a worked-off search: first trial start to last trial end (s), over all workers."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not trials:
        return 0.0
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    end = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    return (end - start).total_seconds()


def finish_planned_study(
    storage: str | optuna.storages.BaseStorage, study_name: str, *, device: str | None = None
) -> StrategyResult:
    """Finish a worked-off planned study once: winner, retraining, result user attrs.

    ``tuning_s`` is the search's wall-clock, first trial start to last trial end, across workers.

    Raises:
        ConfigError: the study does not exist, has no built-in task, still has trials waiting or
            running (finish after the workers have left), or none of its trials completed.
        StorageError: a storage URL that cannot be reached.
    """
    storage = open_storage(storage) if isinstance(storage, str) else storage
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
    return finish_strategy(job.strategy, job.task, study, search_seconds(study))
