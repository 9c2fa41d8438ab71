"""Opening Optuna storages from a URL, with errors that say what is wrong."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import sqlalchemy

from optuna_deelbo._errors import ConfigError, StorageError
from optuna_deelbo._validation import positive_int, shown

__all__ = [
    "DEFAULT_STORAGE",
    "GRPC_SCHEME",
    "POSTGRES_CONNECT_TIMEOUT_S",
    "SQLITE_TIMEOUT_S",
    "is_grpc_url",
    "open_storage",
    "serve_grpc_proxy",
]

#: A storage URL ``grpc://host:port`` connects through Optuna's gRPC storage proxy (``optuna-deelbo proxy``).
GRPC_SCHEME = "grpc://"

#: Where ``optuna-deelbo compare`` writes when no ``--storage`` is given.
DEFAULT_STORAGE = "sqlite:///deelbo.db"
#: How long a SQLite writer waits for another process's lock before failing (s; sqlite3's default is 5).
SQLITE_TIMEOUT_S = 60
#: How long connecting to a PostgreSQL server may take before the storage counts as unreachable (s);
#: a ``connect_timeout=`` in the URL's query wins. Without it an unroutable host hangs for minutes.
POSTGRES_CONNECT_TIMEOUT_S = 10
_LIBPQ_DIALECTS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")  # take libpq's connect_timeout


def is_grpc_url(url: object) -> bool:
    """Whether ``url`` names a gRPC storage proxy (``grpc://host:port``)."""
    return isinstance(url, str) and url.startswith(GRPC_SCHEME)


def _grpc_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``grpc://host:port``."""
    host, sep, port = url.removeprefix(GRPC_SCHEME).rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageError(f"a gRPC storage URL is grpc://HOST:PORT (e.g. grpc://localhost:13000), got {shown(url)}")
    return host, int(port)


def _grpc_proxy(url: str) -> optuna.storages.BaseStorage:
    """A client of the gRPC storage proxy at ``url`` (checked: the proxy answers)."""
    host, port = _grpc_address(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    except ImportError as exc:
        raise StorageError(
            f"cannot open storage {shown(url)}: {exc}; install the gRPC client: pip install 'optuna-deelbo[grpc]'"
        ) from exc
    try:
        proxy.wait_server_ready(timeout=GRPC_CONNECT_TIMEOUT_S)
    except Exception as exc:  # grpc.FutureTimeoutError
        proxy.close()
        raise StorageError(
            f"cannot open storage {shown(url)}: no gRPC storage proxy answers at {host}:{port} within "
            f"{GRPC_CONNECT_TIMEOUT_S} s; start one with `optuna-deelbo proxy --storage <database URL> --port {port}`"
        ) from exc
    return proxy


#: How long a gRPC client waits for the proxy to answer before the storage counts as unreachable (s).
GRPC_CONNECT_TIMEOUT_S = 10


def serve_grpc_proxy(url: str, *, host: str = "localhost", port: int = 13000) -> None:
    """Serve the database ``url`` through Optuna's gRPC storage proxy at ``host:port`` until interrupted.

    Workers then pass ``grpc://host:port`` as their storage: each keeps one gRPC channel instead of a
    database connection pool, and the proxy (one process, Optuna's cached storage) talks to the
    database (``optuna.storages.run_grpc_proxy_server``).

    Raises:
        StorageError: ``url`` is not a database (a proxy cannot front another proxy) or cannot be opened;
            the gRPC server package is missing, or the port cannot be bound.
    """
    if is_grpc_url(url):
        raise StorageError(f"the proxy serves a database (sqlite:///..., postgresql+psycopg://...), not {shown(url)}")
    storage = optuna.storages.get_storage(open_storage(url))  # Optuna's cache in front of the RDB, as it advises
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    except ImportError as exc:
        raise StorageError(f"{exc}; install the gRPC server: pip install 'optuna-deelbo[grpc]'") from exc
    except RuntimeError as exc:  # grpc: the port cannot be bound
        raise StorageError(f"cannot serve the storage proxy on {host}:{port}: {exc}") from exc


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> optuna.storages.BaseStorage:
    """An RDB storage for any SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``), or a gRPC proxy.

    Args:
        url: the database; SQLite for one machine, PostgreSQL (psycopg 3) for many workers;
            ``grpc://host:port`` for Optuna's storage proxy in front of it (``optuna-deelbo proxy``) when
            the database's connections become the bottleneck. The proxy carries no heartbeats (Optuna's
            ``GrpcStorageProxy`` has none): the heartbeat settings are then refused.
        heartbeat_interval: seconds between a running trial's heartbeats; ``None`` = no
            heartbeats. With heartbeats, a trial whose process died is marked failed by the next
            worker that asks for a trial once ``grace_period`` has passed, and is queued again
            (Optuna's ``RetryHeartbeatStaleTrialCallback``) up to ``max_retry`` times.
        grace_period: seconds without a heartbeat before a trial counts as dead; default
            ``2 * heartbeat_interval``; must exceed ``heartbeat_interval``.
        max_retry: how often one configuration is retried after its process died (0 = never,
            ``None`` = without limit).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be
            reached or created.
        ConfigError: a heartbeat setting is not a positive integer, or the grace period is not
            longer than the interval.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StorageError(f"storage must be a SQLAlchemy URL such as {DEFAULT_STORAGE!r}, got {shown(url)}")
    if is_grpc_url(url):
        if heartbeat_interval is not None:
            raise ConfigError(
                "the gRPC storage proxy carries no heartbeats (Optuna's GrpcStorageProxy has none): open it "
                "without heartbeat_interval, or connect to the database itself for heartbeats"
            )
        return _grpc_proxy(url)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        interval = positive_int(heartbeat_interval, "heartbeat interval (s)")
        grace = positive_int(grace_period, "grace period (s)") if grace_period is not None else 2 * interval
        if grace <= interval:
            raise ConfigError(
                f"grace period ({grace} s) must be longer than the heartbeat interval ({interval} s), "
                "or live trials are taken for dead"
            )
        if max_retry is not None and (isinstance(max_retry, bool) or not isinstance(max_retry, int) or max_retry < 0):
            raise ConfigError(f"max_retry must be an integer >= 0 or None, got {max_retry!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        kwargs = {"heartbeat_interval": interval, "grace_period": grace, "heartbeat_stale_trial_callback": retry}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif url.split("://")[0] in _LIBPQ_DIALECTS:
        # pre-ping: after a server restart, dead pooled connections are replaced instead of failing a call
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
        if "connect_timeout" not in url:
            kwargs["engine_kwargs"]["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # SQLAlchemy raises many types (ArgumentError, OperationalError, ImportError...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError) and url.startswith("postgresql"):
            reason += "; install the PostgreSQL driver: pip install 'optuna-deelbo[postgres]'"
        raise StorageError(f"cannot open storage {shown(url)}: {reason}") from exc
    if url.startswith("sqlite") and not _in_memory(url):
        _serialise_sqlite_transactions(storage.engine)
    return storage


def _in_memory(url: str) -> bool:
    """A SQLite database that lives in one connection (``sqlite://``, ``:memory:``): no other process shares it."""
    path = url.split("://", 1)[1]
    return path in ("", "/") or ":memory:" in path or "mode=memory" in path


def _serialise_sqlite_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Start every SQLite transaction with ``BEGIN IMMEDIATE`` (the write lock, waited for up to the timeout).

    Python's sqlite3 driver opens a transaction only at the first write, so two processes could
    both read a trial as WAITING and both mark it RUNNING (one trial run twice). Taking the write
    lock at BEGIN makes Optuna's read-then-update atomic across processes: several workers can share
    one SQLite file on one machine (PostgreSQL remains the choice for many machines).
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks (schema set-up) are replaced by hooked ones
