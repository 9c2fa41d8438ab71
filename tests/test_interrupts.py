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

import pytest
import torch
from torch import nn

import optuna_deelbo as od
from optuna_deelbo._interrupts import Interrupted, interruptible, raise_pending_interrupt
from optuna_deelbo.bayes import DEELBoObjective, IsotropicGaussian
from optuna_deelbo.train import TrainConfig, train_model
from optuna_deelbo.train._batched import train_batched


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
    return DEELBoObjective(model, groups, IsotropicGaussian(body), n_train=20, init_sigma=1e-2)


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
