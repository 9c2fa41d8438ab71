"""tuning/_worker.py: a worker waits out a storage outage while it joins as well as while it trains."""

from __future__ import annotations

import pytest
import sqlalchemy

from optuna_deelbo import StorageError
from optuna_deelbo.tuning import _worker


def _outage() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_an_outage_while_joining_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker still pretraining when the database went away used to die with a traceback (measured)."""
    monkeypatch.setattr(_worker, "RECONNECT_PAUSES_S", (0.0, 0.0))
    calls = []

    def join() -> list[_worker.Job]:
        calls.append(1)
        if len(calls) == 1:
            raise _outage()
        return []  # joined; nothing queued

    assert _worker._run_surviving_outages(join, "postgresql://db", poll_s=0.01, on_trial=None) == 0
    assert len(calls) == 2


def test_an_outage_longer_than_the_pauses_ends_in_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "RECONNECT_PAUSES_S", (0.0,))

    def join() -> list[_worker.Job]:
        raise _outage()

    with pytest.raises(StorageError, match=r"unreachable .*start the worker again"):
        _worker._run_surviving_outages(join, "postgresql://db", poll_s=0.01, on_trial=None)


def test_a_bad_request_is_not_taken_for_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    def join() -> list[_worker.Job]:
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError, match="not a connection problem"):
        _worker._run_surviving_outages(join, "postgresql://db", poll_s=0.01, on_trial=None)
