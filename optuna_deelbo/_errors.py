"""The package's exception types: every user-facing mistake raises one of these."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MissingDependency",
    "SearchFailed",
    "StorageError",
    "StudyExists",
    "TrainingDiverged",
]


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read or does not belong to the run resuming from it."""


class ConfigError(ValueError):
    """A bad argument or setting, caught before any work starts; the message names it."""


class StudyExists(ConfigError):
    """A study of that name is already in the storage: resume it, overwrite it, or choose another name."""


class MissingDependency(ImportError):
    """An optional package (e.g. optuna-dashboard) is needed for this call; the message says how to install it."""


class StorageError(RuntimeError):
    """An Optuna storage URL that cannot be opened or used."""


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss, lambda or sigma; the message says which and when."""


class SearchFailed(RuntimeError):
    """Every trial of a search failed or was pruned: no configuration to choose.

    The message names the study and the first trial's reason; the study stays in its storage
    (each trial's ``failure:reason`` user attr) for inspection.
    """
