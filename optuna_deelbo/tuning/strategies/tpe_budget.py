"""``tpe-budget``: TPE given the DE-ELBo search's measured wall-clock (the equal-budget duel, issue 33).

The honest question to DE-ELBo is "why not TPE with as much time as your search took?". This
strategy is the plain ``tpe`` search (same sampler, pruner, box and trial cap) under a time budget
with Optuna's ``timeout`` semantics: no trial starts once the trials run so far have taken the
budget; the one running finishes, and the winner's retraining comes on top. In ``compare`` the
budget is the total wall-clock of the first DE-ELBo search listed before it, measured in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import shown
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._trial_queue import trial_seconds
from optuna_deelbo.tuning.strategies._base import skip_trial, task_objective
from optuna_deelbo.tuning.strategies.tpe import TPEStrategy

__all__ = ["TPEBudgetStrategy", "spent_seconds"]


def spent_seconds(study: optuna.Study) -> float:
    """Wall-clock (s) of the study's finished trials that trained, from their start and completion times."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return trial_seconds([t for t in finished if not t.user_attrs.get(A.SKIPPED)])


class TPEBudgetStrategy(TPEStrategy):
    """MAP + TPE as :class:`TPEStrategy`, stopped once its trials have taken ``budget_s`` seconds.

    The planned trials are the TPE cap (the grid's 24 by default); those left when the budget is
    spent end PRUNED without training (``skipped``, with ``failure:reason``), so the ``trials`` a
    result counts are the ones that ran. A resumed study counts the trials run before. The budget
    is measured, not planned: it is not in the plan signature, and the study attr ``budget_s``
    holds the one its trials ran under.

    Args:
        budget_s: the wall-clock budget (s, > 0); ``None`` until :meth:`with_budget` (``compare``
            sets it from the DE-ELBo search before it).
        trials: the cap on trials; default the grid's 24.
    """

    name = "tpe-budget"
    description = (
        "MAP + TPE + median pruning with the DE-ELBo search's wall-clock as its budget (no trial starts after it), "
        "80/20 split, val NLL, retrain on all N"
    )

    def __init__(
        self,
        budget_s: float | None = None,
        trials: int | None = None,
        learning_rates: Sequence[float] | None = None,
    ) -> None:
        super().__init__(trials, learning_rates)
        self.budget_s = None if budget_s is None else _budget(budget_s)

    def with_budget(self, budget_s: float) -> TPEBudgetStrategy:
        """This strategy with the budget ``budget_s`` (s)."""
        return TPEBudgetStrategy(_budget(budget_s), self._trials, self.learning_rates)

    def objective(self, task: TaskSpec) -> Callable[[optuna.trial.Trial], float]:
        budget = self.budget_s
        if budget is None:
            raise ConfigError(
                "tpe-budget has no budget: list a DE-ELBo strategy (deelbo or deelbo-descend) before it in "
                "--strategies (its measured wall-clock is the budget), or give TPEBudgetStrategy(budget_s=...)"
            )
        search = task_objective(task, self.lr_range)

        def objective(trial: optuna.trial.Trial) -> float:
            trial.study.set_user_attr(A.BUDGET_S, budget)
            spent = spent_seconds(trial.study)
            if spent >= budget:
                skip_trial(
                    trial,
                    f"skipped: the budget of {budget:.1f} s (the DE-ELBo search's wall-clock) was spent "
                    f"({spent:.1f} s of trials); tpe-budget starts no trial after it",
                )
            return search(trial)

        return objective


def _budget(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"tpe-budget's budget must be a finite number of seconds > 0, got {shown(value)}")
    return float(value)
