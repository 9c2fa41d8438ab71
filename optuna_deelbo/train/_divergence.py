"""When a training run counts as diverged: non-finite values, an exploding posterior std, a runaway NLL.

The training loop checks its log row every ``log_every`` steps (one host synchronisation it
makes anyway) with a :class:`DivergenceMonitor`, which raises
:class:`~optuna_deelbo.TrainingDiverged` on the first of three failure modes. The
message starts with a stable tag naming the mode (:data:`DIVERGENCE_KINDS`), and
:func:`optuna_deelbo.fit` stores it as the ``failure:reason`` user attr of a pruned trial:

* ``non-finite``: any logged value (loss, NLL, penalty, learning rate, lambda, tau, mean
  sigma, scheduled weight decay) is NaN or infinite;
* ``exploding sigma``: the largest posterior standard deviation exceeds
  :attr:`DivergenceRule.max_sigma` (weight units);
* ``diverging``: the running training NLL (mean over the last ``log_every`` steps) is above
  ``nll_factor`` times the reference NLL for ``patience`` consecutive checks; the reference is
  the first step's NLL, at least ``min_reference`` nats (so a run that starts from a nearly
  perfect fit is not stopped by noise); a run whose last check is above the limit is diverged
  too (:meth:`DivergenceMonitor.check_end`: too short for ``patience`` checks, it has no steps
  left to recover in).
"""

from __future__ import annotations

import math
from typing import Protocol

from torch import Tensor

from optuna_deelbo._divergence_rule import DivergenceRule
from optuna_deelbo._errors import TrainingDiverged

__all__ = ["DIVERGENCE_KINDS", "DivergenceMonitor", "DivergenceRule"]

#: The tags a :class:`TrainingDiverged` message from the monitor starts with.
DIVERGENCE_KINDS: tuple[str, ...] = ("non-finite", "exploding sigma", "diverging")


class _HasMaxSigma(Protocol):
    def max_sigma(self) -> float: ...


class DivergenceMonitor:
    """Applies a :class:`DivergenceRule` to one run's log rows.

    Args:
        rule: the limits.
        lr: the run's learning rate (named in messages).
    """

    def __init__(self, rule: DivergenceRule, lr: float) -> None:
        self.rule = rule
        self.lr = lr
        self._first_nll: Tensor | float | None = None
        self._above = 0
        self._last: tuple[int, float] | None = None  # (step, NLL) of the last check above the limit

    def start(self, first_nll: Tensor | float) -> None:
        """Record the first step's NLL (a 0-d tensor is read only at the next :meth:`check`)."""
        if self._first_nll is None:
            self._first_nll = first_nll.detach() if isinstance(first_nll, Tensor) else first_nll

    @property
    def reference(self) -> float | None:
        """The reference NLL (nats per example), or ``None`` before :meth:`start`."""
        if self._first_nll is None:
            return None
        first = float(self._first_nll)
        return max(first, self.rule.min_reference) if math.isfinite(first) else self.rule.min_reference

    def state_dict(self) -> dict[str, float | int | None]:
        """The monitor's state for a checkpoint: the reference NLL and the count of checks above the limit."""
        first = None if self._first_nll is None else float(self._first_nll)
        return {"first_nll": first, "above": self._above}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Continue from :meth:`state_dict` (a resumed run keeps the original first-step NLL)."""
        first, above = state["first_nll"], state["above"]
        self._first_nll = None if first is None else float(first)
        self._above = int(above or 0)

    def check(self, step: int, row: dict[str, float], posterior: _HasMaxSigma | None = None) -> None:
        """Raise :class:`TrainingDiverged` if the log ``row`` of ``step`` shows divergence.

        Args:
            step: the 1-based optimiser step the row was logged at.
            row: the loop's log row (``loss``, ``nll``, ... as floats).
            posterior: the DE-ELBo posterior (for its largest sigma), or ``None`` for MAP.
        """
        where = f"at step {step} (lr={self.lr:g})"
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"non-finite {', '.join(bad)} {where}")
        if posterior is not None and self.rule.max_sigma is not None:
            largest = posterior.max_sigma()
            if not math.isfinite(largest):
                raise TrainingDiverged(f"non-finite sigma {where}")
            if largest > self.rule.max_sigma:
                raise TrainingDiverged(
                    f"exploding sigma: largest posterior std {largest:.3g} > max_sigma {self.rule.max_sigma:g} {where}"
                )
        reference = self.reference
        if self.rule.nll_factor is None or reference is None or "nll" not in row:
            return
        limit = self.rule.nll_factor * reference
        self._above = self._above + 1 if row["nll"] > limit else 0
        self._last = (step, row["nll"]) if self._above else None
        if self._above >= self.rule.patience:
            raise TrainingDiverged(
                f"diverging: training NLL {row['nll']:.4g} above {self.rule.nll_factor:g} x the first step's "
                f"{reference:.3g} for {self._above} checks in a row {where}"
            )

    def check_end(self) -> None:
        """At the end of a run: raise :class:`TrainingDiverged` if its last check was above the NLL limit.

        ``patience`` forgives a spike the run recovers from; a run that ends above the limit
        (e.g. 20 steps at lr 1e6, fewer checks than ``patience``) does not recover.
        """
        if self._last is None or self.rule.nll_factor is None:
            return
        step, nll = self._last
        raise TrainingDiverged(
            f"diverging: training NLL {nll:.4g} above {self.rule.nll_factor:g} x the first step's "
            f"{self.reference:.3g} at the end of training (step {step}, lr={self.lr:g})"
        )
