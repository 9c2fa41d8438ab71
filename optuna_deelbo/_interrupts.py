"""Ctrl-C and ``kill`` that always stop a run, even when they land in a finalizer.

Python runs a signal's handler between two bytecodes of whatever code is running, and that can
be a finalizer: a ``__del__`` method or a weakref callback run by the garbage collector (SQLAlchemy
keeps such callbacks for every object it loads). An exception raised there cannot propagate:
Python prints "Exception ignored in ..." and goes on. A ``KeyboardInterrupt`` raised by a signal
handler is then lost, and the run the user stopped continues to the end and exits 0 (seen in CI:
a SIGTERM in ``InstanceState._cleanup``).

Inside :func:`interruptible`, SIGINT and SIGTERM raise :class:`Interrupted` (a ``KeyboardInterrupt``)
and also leave it pending; :func:`raise_pending_interrupt` raises a pending one again. The training
loops call it once per step, and :func:`interruptible` at its exit, so a swallowed interrupt stops the
run at the next step at the latest. A swallowed one prints nothing (it is delivered again).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Interrupted", "interruptible", "raise_pending_interrupt", "signals_held"]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received inside :func:`interruptible`; the message names the signal."""


_pending: list[Interrupted] = []  # the interrupt received and not yet seen to propagate (at most one)


def raise_pending_interrupt() -> None:
    """Raise again an interrupt whose first raise a finalizer swallowed; nothing if none is pending.

    Cheap (one list check): the training loops call it every step.
    """
    if _pending:
        raise _pending[0]


def _handler(signum: int, frame: object) -> None:
    interrupt = Interrupted(f"signal {signum} ({signal.Signals(signum).name})")
    _pending[:] = [interrupt]
    raise interrupt


def _quiet_unraisable(previous: Any) -> Any:
    """An unraisable-exception hook that says nothing about a swallowed :class:`Interrupted` (it stays
    pending and is raised again) and passes every other one to ``previous``."""

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            previous(unraisable)

    return hook


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` and are never lost.

    Outside the main thread (where Python allows no signal handler) it changes nothing, and a signal
    ignored when the block starts stays ignored. On exit the
    previous handlers come back; an interrupt still pending (swallowed and not yet raised again) is
    raised then, so a stopped run never ends as a finished one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal ignored when the block starts (``nohup``, a background job) stays ignored.
    signals = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, _handler) for sig in signals}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    _pending.clear()
    try:
        yield
        raise_pending_interrupt()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook
        _pending.clear()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (blocked, not lost) while the block runs; one that came meanwhile is
    delivered as the block ends, its handler running then.

    For a few storage calls that must not be cut apart, such as taking a trial and recording that this
    process holds it. Where the OS allows no signal mask (Windows) or outside the main thread, it
    changes nothing.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
