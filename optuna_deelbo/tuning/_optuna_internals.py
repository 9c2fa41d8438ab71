"""Every use of Optuna's private state, one function each (tests/test_optuna_internals.py fails loudly on an upgrade).

Optuna has no public way to: take one WAITING trial atomically (what lets any number of workers
share a planned queue), beat a trial's heartbeat at once, or read a ``GridSampler``'s grid. Nothing
else in the package touches an Optuna attribute that starts with ``_``.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial

__all__ = ["clear_trials_cache", "grid_search_space", "heartbeat_enabled", "study_id", "study_storage", "trial_id"]


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage object ``study`` reads and writes (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: FrozenTrial | optuna.trial.Trial) -> int:
    """The storage's id of a trial (``._trial_id``; a trial number is only unique within its study)."""
    return trial._trial_id


def clear_trials_cache(study: optuna.Study) -> None:
    """Make ``study`` read the storage's trials afresh, as ``Study.ask`` does (``_thread_local.cached_all_trials``)."""
    study._thread_local.cached_all_trials = None


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` records heartbeats (``optuna.storages._heartbeat.is_heartbeat_enabled``)."""
    return bool(is_heartbeat_enabled(storage))


def grid_search_space(sampler: GridSampler) -> dict[str, list[Any]]:
    """The grid a ``GridSampler`` was built with (``GridSampler._search_space``), ``{name: values}``."""
    return {name: list(values) for name, values in sampler._search_space.items()}
