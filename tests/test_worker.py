"""tuning/_worker.py: a worker waits out a storage outage while it joins as well as while it trains."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from optuna_deelbo import StorageError
from optuna_deelbo.tuning import _worker
from optuna_deelbo.tuning._storage import open_storage
from optuna_deelbo.tuning._trial_queue import PlannedStudy, plan_study, queue_progress


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


class OutageAtTaking:
    """A real outage of an RDB storage's database (every statement refused) that starts as the first trial is
    flipped to RUNNING: with ``reply_lost`` the flip commits and its caller still gets the error (the server
    went away before answering), else the flip returns and the next statement is the first refused.
    ``down_s`` = 0: that one call fails, the database answers again at once."""

    def __init__(self, storage: optuna.storages.RDBStorage, *, reply_lost: bool, down_s: float) -> None:
        self.reply_lost, self.down_s = reply_lost, down_s
        self.refuse_next = 0
        self.down_until = 0.0
        self.started = False
        flip = storage.set_trial_state_values

        def set_trial_state_values(trial_id: int, state: TrialState, values: object = None) -> bool:
            flipped = flip(trial_id, state=state, values=values)  # type: ignore[arg-type]
            if state == TrialState.RUNNING and not self.started:
                self.started = True
                self.down_until = time.monotonic() + down_s
                if reply_lost:
                    raise _outage()
                self.refuse_next = 1
            return flipped

        storage.set_trial_state_values = set_trial_state_values  # type: ignore[method-assign]
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute", self._refuse)

    def _refuse(self, *args: object) -> None:
        if self.refuse_next > 0 or time.monotonic() < self.down_until:
            self.refuse_next = 0
            raise _outage()


@pytest.mark.parametrize("down_s", [0.0, 1.0])
@pytest.mark.parametrize("reply_lost", [True, False], ids=["flip-reply-lost", "call-after-flip-refused"])
def test_a_trial_taken_as_the_database_goes_away_is_retried_not_waited_for(
    reply_lost: bool, down_s: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI (2026-12-07): a PostgreSQL restart mid-study left a trial RUNNING with no heartbeat at all (flipped,
    then its first beat refused), which Optuna never takes for dead: four workers polled for it past 300 s.
    Now a trial beats before it is flipped, and one this worker took and gave up is queued again at once."""
    monkeypatch.setattr(_worker, "RECONNECT_PAUSES_S", (0.2,) * 50)
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    plan_study(optuna.create_study(study_name="queue", storage=storage), [{"x": float(i)} for i in range(3)])
    OutageAtTaking(storage, reply_lost=reply_lost, down_s=down_s)

    def join() -> list[_worker.Job]:
        return [(PlannedStudy(study_name="queue", storage=storage), lambda t: t.suggest_float("x", 0, 10))]

    ran: list[int] = []
    worker = threading.Thread(
        target=lambda: ran.append(_worker._run_surviving_outages(join, url, poll_s=0.1, on_trial=None)), daemon=True
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the worker still waits for a trial nobody runs"
    study = optuna.load_study(study_name="queue", storage=url)
    assert sorted(t.params["x"] for t in study.get_trials(states=(TrialState.COMPLETE,))) == [0.0, 1.0, 2.0]
    progress = queue_progress(study)
    assert progress.done and progress.failed == 0 and progress.retried == 1, progress
