"""``LoopHealth``: what a :class:`~optuna_deelbo.bayes.DEELBo` learns about the loop that trains it.

A user's own loop has no log rows for :class:`~optuna_deelbo.train.DivergenceMonitor` to read,
so the ``DEELBo`` keeps, on the device and without a host synchronisation per step:

* whether every training NLL so far was finite;
* the first step's NLL (the reference) and an exponential moving average of the NLL
  (weight :data:`EMA_WEIGHT` on each new step), read only when the run is checked;
* the number of ``loss()`` calls, and the call count at the last BatchNorm recalibration.

:meth:`LoopHealth.check` applies the same :class:`~optuna_deelbo.train.DivergenceRule` as
``od.fit``: non-finite values, a posterior std above ``max_sigma``, or the running NLL above
``nll_factor`` times the reference (at least ``min_reference``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optuna_deelbo._divergence_rule import DivergenceRule
from optuna_deelbo._errors import TrainingDiverged

__all__ = ["EMA_WEIGHT", "LoopHealth"]

#: Weight of the newest step in the running NLL (about the last 10 steps).
EMA_WEIGHT = 0.1


class LoopHealth:
    """Device-side record of one DE-ELBo run's training NLL (see the module docstring)."""

    def __init__(self, rule: DivergenceRule) -> None:
        self.rule = rule
        self.steps = 0
        self.recalibrated_at: int | None = None
        self._finite: Tensor | None = None
        self._first: Tensor | None = None
        self._running: Tensor | None = None

    def record(self, nll: Tensor) -> None:
        """Add one step's mean NLL (a detached 0-d tensor; no synchronisation)."""
        nll = nll.detach().float()
        self.steps += 1
        if self._first is None or self._finite is None or self._running is None:
            self._first, self._running, self._finite = nll.clone(), nll.clone(), torch.isfinite(nll)
            return
        self._finite = self._finite & torch.isfinite(nll)
        self._running = torch.lerp(self._running, nll, EMA_WEIGHT)

    @property
    def batchnorm_stale(self) -> bool:
        """Training steps ran since the last BatchNorm recalibration (or none was made)."""
        return self.steps > 0 and (self.recalibrated_at is None or self.recalibrated_at < self.steps)

    def check(self, max_sigma: float) -> None:
        """Raise :class:`~optuna_deelbo.TrainingDiverged` if the run so far counts as diverged.

        Args:
            max_sigma: the posterior's largest std now (weight units).
        """
        where = f"after {self.steps} training steps"
        if self._finite is not None and not bool(self._finite):
            raise TrainingDiverged(f"non-finite training NLL {where}: lower the learning rate")
        if not math.isfinite(max_sigma):
            raise TrainingDiverged(f"non-finite sigma {where}")
        if self.rule.max_sigma is not None and max_sigma > self.rule.max_sigma:
            raise TrainingDiverged(
                f"exploding sigma: largest posterior std {max_sigma:.3g} > max_sigma {self.rule.max_sigma:g} {where}"
            )
        if self.rule.nll_factor is None or self._first is None or self._running is None:
            return
        first, running = float(self._first), float(self._running)
        reference = max(first, self.rule.min_reference)
        if running > self.rule.nll_factor * reference:
            raise TrainingDiverged(
                f"diverging: running training NLL {running:.4g} above {self.rule.nll_factor:g} x the first step's "
                f"{reference:.3g} {where}: lower the learning rate"
            )
