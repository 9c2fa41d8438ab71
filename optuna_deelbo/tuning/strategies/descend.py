"""DE-ELBo from the largest learning rate down, stopping once the selection score gets worse (issue 33, route c).

The 4-rate DE-ELBo search picked its largest rate in 6 of 6 digits runs and the paper's rule its
largest in 12 of 12 ConvNeXt runs: most of the search's cost goes to rates that lose. Here the
rates run one at a time, largest first; before each, the trials of the larger rates are read, and
once the run directly above scored no better than the best above it, this and every smaller rate
is pruned without training (``failure:reason`` says why). A rate that diverged counts as no score:
the search goes on down. When the largest rate wins, the search is 2 runs (it, and the next to
confirm); it is never more runs than the 4-rate search, and it picks the same rate whenever the
selection score falls and then rises over the rates (unimodal), which is what the stop assumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning._fit import fit
from optuna_deelbo.tuning.strategies._base import Strategy, skip_trial, suggest_hyperparameters
from optuna_deelbo.tuning.strategies.deelbo import DEELBoStrategy

__all__ = ["DescendingDEELBoStrategy", "descend_skip_reason", "descend_stop"]


def descend_stop(scores: Sequence[float | None]) -> bool:
    """Whether to stop before the next smaller learning rate.

    Args:
        scores: the selection scores (lower is better) of the larger rates' runs, largest rate
            first; ``None`` for a run without one (diverged, pruned).

    Returns:
        ``True`` once the last scored run is no better than the best scored run before it.
    """
    scored = [s for s in scores if s is not None]
    return len(scored) >= 2 and scored[-1] >= min(scored[:-1])


class DescendingDEELBoStrategy(DEELBoStrategy):
    """DE-ELBo runs on all N from the largest learning rate down, stopping once the selection score gets worse.

    The trials are planned as the 4-rate search's (largest first, so a resumed study goes on
    where it stopped); the skipped ones end PRUNED without training. Never batched: each run's
    decision needs the runs before it.

    Args:
        learning_rates: the grid (default :data:`~optuna_deelbo.tuning.strategies.LEARNING_RATES`), run largest first.
    """

    name = "deelbo-descend"
    description = (
        "DE-ELBo: learning rates from the largest down, stopping once the selection score gets worse "
        "(2 runs when the largest wins), weight decay learned in-loop, no validation set"
    )

    def __init__(self, learning_rates: Sequence[float] | None = None) -> None:
        super().__init__(learning_rates, batched="off")
        self.learning_rates = tuple(sorted(self.learning_rates, reverse=True))

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        return cls(learning_rates)  # always sequential: each rate's score decides whether the next one trains

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        """The user objective, preceded by the stop rule (:func:`descend_skip_reason`)."""

        def objective(trial: optuna.trial.Trial) -> float:
            lr, weight_decay = suggest_hyperparameters(trial, self.lr_range)
            reason = descend_skip_reason(trial, lr)
            if reason is not None:
                skip_trial(trial, reason)
            return fit(trial, task, lr=lr, weight_decay=weight_decay)

        return objective


def descend_skip_reason(trial: optuna.trial.Trial, lr: float) -> str | None:
    """Why ``trial`` should not train at learning rate ``lr`` under the descending rule, or ``None``.

    The rule of :class:`DescendingDEELBoStrategy` for any objective (own loop, Trainer, Lightning):
    enqueue the learning rates largest first, and prune a trial for which this returns a reason.
    It reads the study's finished trials at larger rates (their values: lower is better).
    """
    above = _scores_above(trial.study, lr, exclude=trial.number)
    if not descend_stop([score for _, score in above]):
        return None
    shown = ", ".join(f"lr={rate:g}: {'-' if s is None else f'{s:.4g}'}" for rate, s in above)
    return f"skipped: the selection score got worse going down the learning rates ({shown}); the descent stops there"


def _scores_above(study: optuna.Study, lr: float, *, exclude: int) -> list[tuple[float, float | None]]:
    """``(lr, score)`` of the finished trials at larger rates, largest first (``None``: no score)."""
    rows: dict[float, float | None] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        rate = t.params.get("lr")
        if t.number == exclude or rate is None or rate <= lr:
            continue
        score = t.value if t.state == TrialState.COMPLETE else None
        if score is not None or rate not in rows:  # a retry's score replaces its pruned first try
            rows[float(rate)] = score
    return sorted(rows.items(), key=lambda item: -item[0])
