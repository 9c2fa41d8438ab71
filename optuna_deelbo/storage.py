"""Opening Optuna storages from a URL, with errors that say what is wrong."""

from __future__ import annotations

import optuna

from optuna_deelbo._errors import StorageError

__all__ = ["DEFAULT_STORAGE", "open_storage"]

#: Where ``optuna-deelbo compare`` writes when no ``--storage`` is given.
DEFAULT_STORAGE = "sqlite:///deelbo.db"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for any SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be
            reached or created.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StorageError(f"storage must be a SQLAlchemy URL such as {DEFAULT_STORAGE!r}, got {url!r}")
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy raises many types (ArgumentError, OperationalError, ImportError...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open storage {url!r}: {reason}") from exc
