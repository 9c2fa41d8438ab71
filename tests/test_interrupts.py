"""An interrupt that lands in a finalizer is not lost (optuna_deelbo._interrupts).

CI once saw a SIGTERM delivered while SQLAlchemy ran a weakref callback: Python swallowed the
KeyboardInterrupt ("Exception ignored in ..."), and the stopped ``compare`` ran to the end and exited 0.
Here a finalizer signals its own process, so the interrupt lands inside it every time.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Iterator

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import optuna_deelbo as od
from optuna_deelbo._interrupts import Interrupted, interruptible, raise_pending_interrupt
from optuna_deelbo.bayes import DEELBo, DEELBoObjective, IsotropicGaussian
from optuna_deelbo.train import TrainConfig, train_model
from optuna_deelbo.train._batched import train_batched
from optuna_deelbo.tuning._trial_queue import PlannedStudy, plan_study, requeue_interrupted, run_queue


class SignalsWhenCollected:
    """An object whose finalizer sends ``sig`` to this process: the handler runs inside ``__del__``."""

    def __init__(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.sig = sig

    def __del__(self) -> None:
        signal.raise_signal(self.sig)


def _swallow_an_interrupt(sig: signal.Signals = signal.SIGTERM) -> None:
    """Collect a :class:`SignalsWhenCollected`; Python swallows what its finalizer raises."""
    doomed = SignalsWhenCollected(sig)
    del doomed
    gc.collect()


@pytest.fixture
def python_signal_handlers() -> Iterator[None]:
    """Each test starts from Python's own SIGINT and SIGTERM handlers, and must end with them and the same
    unraisable hook (interruptible() restores them); the inherited ones come back afterwards.

    A shell's background job inherits SIGINT ignored (``nohup python -m pytest &``: a fresh clone's run
    failed so), and interruptible() rightly leaves an ignored signal ignored.
    """
    inherited = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    hook = sys.unraisablehook
    try:
        yield
        now = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook
        assert now == (signal.SIG_DFL, signal.default_int_handler, hook)
    finally:
        signal.signal(signal.SIGTERM, inherited[0])
        signal.signal(signal.SIGINT, inherited[1])


@pytest.mark.usefixtures("python_signal_handlers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_swallowed_interrupt_is_raised_again_and_prints_nothing(
    sig: signal.Signals, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Interrupted, match=sig.name), interruptible():
        _swallow_an_interrupt(sig)  # no exception escapes the finalizer ...
        with pytest.raises(Interrupted, match=sig.name):
            raise_pending_interrupt()  # ... but it is pending
    assert "Exception ignored" not in capfd.readouterr().err
    raise_pending_interrupt()  # the block's exit cleared it: nothing pending outside


@pytest.mark.usefixtures("python_signal_handlers")
def test_the_block_exit_raises_a_swallowed_interrupt_nothing_raised_again() -> None:
    """A stopped run never ends as a finished one, even when no training step came after the signal."""
    finished = False
    with pytest.raises(Interrupted), interruptible():
        _swallow_an_interrupt()
        finished = True
    assert finished


@pytest.mark.usefixtures("python_signal_handlers")
def test_other_unraisable_exceptions_still_reach_the_previous_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def __del__(self) -> None:
            raise RuntimeError("a finalizer bug")

    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    with interruptible():
        broken = Broken()
        del broken
        gc.collect()
    assert [str(e) for e in reported] == ["a finalizer bug"]


@pytest.mark.usefixtures("python_signal_handlers")
def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with interruptible():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            signal.raise_signal(signal.SIGTERM)  # ignored: nothing raised, nothing pending
            raise_pending_interrupt()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


def _objective() -> DEELBoObjective:
    torch.manual_seed(0)
    model = Tiny()
    groups = od.bayes.ParameterGroups.split(model, ("head.",))
    body = groups.flat(dict(model.named_parameters()), "body").detach().clone()
    return DEELBoObjective(DEELBo(model, 20, IsotropicGaussian(body), head=groups, init_sigma=1e-2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)


CONFIG = TrainConfig(lr=0.05, steps=10, batch_size=5, log_every=1, progress=False, device="cpu")


@pytest.mark.usefixtures("python_signal_handlers")
def test_training_stops_at_the_step_after_a_swallowed_interrupt() -> None:
    steps: list[int] = []

    def on_step(step: int) -> None:
        steps.append(step)
        if step == 3:
            _swallow_an_interrupt()

    with pytest.raises(Interrupted), interruptible():
        train_model(_objective(), *_data(), CONFIG, on_step=on_step)
    assert steps == [1, 2, 3]


@pytest.mark.usefixtures("python_signal_handlers")
def test_batched_training_stops_at_the_step_after_a_swallowed_interrupt() -> None:
    batches = 0

    def transform(x: torch.Tensor) -> torch.Tensor:
        nonlocal batches
        batches += 1
        if batches == 2:
            _swallow_an_interrupt()
        return x

    with pytest.raises(Interrupted), interruptible():
        train_batched([_objective(), _objective()], *_data(), [CONFIG, CONFIG], transform=transform)
    assert batches == 2  # one minibatch per step for all members: stopped before step 3


class SignalsAfterTaking:
    """A storage wrapper that sends ``sig`` to this process right after a trial is flipped to RUNNING:
    the interrupt lands between taking a trial and Optuna's ``try`` around the objective."""

    def __init__(self, storage: optuna.storages.BaseStorage, sig: signal.Signals) -> None:
        self._storage, self._sig = storage, sig

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: object = None) -> bool:
        flipped = self._storage.set_trial_state_values(trial_id, state=state, values=values)  # type: ignore[arg-type]
        if state == TrialState.RUNNING:
            signal.raise_signal(self._sig)
        return flipped

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)


def _planned(storage: optuna.storages.BaseStorage, n: int) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name="queue")
    plan_study(study, [{"x": float(i)} for i in range(n)])
    return study


def _objective_x(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 10.0)


@pytest.mark.usefixtures("python_signal_handlers")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_just_after_a_trial_is_taken_fails_it_not_leaves_it_running(
    sig: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = optuna.storages.InMemoryStorage()
    study = _planned(storage, 2)
    planned = PlannedStudy.of(study, storage)
    monkeypatch.setattr(planned, "_storage", SignalsAfterTaking(storage, sig))
    with pytest.raises(KeyboardInterrupt), interruptible():
        run_queue([(planned, _objective_x)])
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert requeue_interrupted(study, fail_running=False) == 1  # --resume retries it


@pytest.mark.usefixtures("python_signal_handlers")
def test_a_stopped_worker_fails_only_the_trials_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = optuna.storages.InMemoryStorage()
    study = _planned(storage, 3)
    other = PlannedStudy.of(study, storage)
    other.ask()  # another worker holds trial 0
    mine = PlannedStudy.of(study, storage)
    monkeypatch.setattr(mine, "_storage", SignalsAfterTaking(storage, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt), interruptible():
        run_queue([(mine, _objective_x)], wait_for_running=False)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]


@pytest.mark.usefixtures("python_signal_handlers")
def test_an_interrupt_while_a_batched_search_takes_its_trials_fails_them(
    tiny_digits_task: od.TaskSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna_deelbo.tuning._batched import run_batched_trials

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name="batched", sampler=od.DEELBoSampler(optuna.samplers.RandomSampler(seed=0))
    )
    plan_study(study, [{"lr": lr} for lr in (0.03, 0.01)])
    planned = PlannedStudy.of(study, storage)
    monkeypatch.setattr(planned, "_storage", SignalsAfterTaking(storage, signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt), interruptible():
        run_batched_trials(planned, tiny_digits_task, lambda t: t.suggest_float("lr", 1e-4, 1.0, log=True))
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
