"""Successive halving over a batched learning-rate search: when members are ranked and how many go on.

Synchronous successive halving (Jamieson & Talwalkar 2016) with ``eta = 2`` over ``K`` members that
train side by side (:func:`~optuna_deelbo.train.train_batched`): at rung ``k`` (``k = 1 .. R``,
``R = ceil(log2 K)``) the members still training are ranked by their training loss
(:meth:`~optuna_deelbo.train.LoopState.rung_loss`, lower is better) and the best ``ceil(K / 2^k)`` go on;
rung ``k`` sits at ``steps * 2^(k-1) / 2^R``. For 4 learning rates: ranked at 1/4 and 1/2 of the
steps, 4 -> 2 -> 1, costing ``4/4 + 2/4 + 2/4 = 2`` single runs instead of 4. The counts come from
the number of planned members, not of those left: a resumed search whose survivors alone are
retried makes the same cuts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna_deelbo._errors import ConfigError

__all__ = ["Rung", "halving_cost", "halving_rungs", "rung_cut"]


@dataclass(frozen=True)
class Rung:
    """After ``step`` (1-based, a log step), only the best ``keep`` members train on."""

    step: int
    keep: int


def halving_rungs(members: int, steps: int, *, log_every: int = 10, eta: int = 2) -> tuple[Rung, ...]:
    """The rungs of a halving search over ``members`` runs of ``steps`` steps (see the module docstring).

    Rung steps are rounded to multiples of ``log_every`` (where the loss is read), at least one log
    interval in and before the last step; rungs that land on one step merge into the smaller ``keep``.
    No rung for one member or for runs shorter than two log intervals.
    """
    if members < 1 or steps < 1 or log_every < 1 or eta < 2:
        raise ConfigError(
            f"halving needs members, steps, log_every >= 1 and eta >= 2, got {members}, {steps}, {log_every}, {eta}"
        )
    depth = math.ceil(math.log(members, eta) - 1e-9) if members > 1 else 0
    rungs: dict[int, int] = {}
    for k in range(1, depth + 1):
        raw = steps * eta ** (k - 1) / eta**depth
        step = max(log_every, round(raw / log_every) * log_every)
        if step >= steps:
            continue
        keep = math.ceil(members / eta**k)
        rungs[step] = min(keep, rungs.get(step, keep))
    return tuple(Rung(step, keep) for step, keep in sorted(rungs.items()))


def halving_cost(members: int, rungs: Sequence[Rung], steps: int) -> float:
    """Member-steps of a halving search over ``steps``-step runs, in single runs (``members`` with no rung)."""
    trained, alive, start = 0.0, members, 0
    for rung in rungs:
        trained += alive * (rung.step - start)
        alive, start = min(alive, rung.keep), rung.step
    return (trained + alive * (steps - start)) / steps


def rung_cut(losses: Sequence[float], keep: int) -> list[int]:
    """Indices of the members that stop at a rung: all but the ``keep`` lowest ``losses`` (non-finite last, ties
    to the earlier member), in ranking order."""
    order = sorted(range(len(losses)), key=lambda i: (losses[i] if math.isfinite(losses[i]) else math.inf, i))
    return order[keep:]
