"""The package's exception types: every user-facing mistake raises one of these."""

from __future__ import annotations

__all__ = ["ConfigError", "StorageError", "TrainingDiverged"]


class ConfigError(ValueError):
    """A bad argument or setting, caught before any work starts; the message names it."""


class StorageError(RuntimeError):
    """An Optuna storage URL that cannot be opened or used."""


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss, lambda or sigma; the message says which and when."""
