"""DE-ELBo with successive halving over the learning rates: the search in 2 runs (issue 33, route a).

The 4 learning rates train side by side as one batched model (:func:`~optuna_deelbo.train.train_batched`);
at 1/4 and 1/2 of the steps the members still training are ranked by their training DE-ELBo loss and
the worse half stop (:func:`~optuna_deelbo.train.halving_rungs`): 4 -> 2 -> 1, costing
``4/4 + 2/4 + 2/4 = 2`` single runs. The survivor is the choice; the stopped members end PRUNED with
the rung, loss and rank in ``failure:reason`` and their rung losses in ``halving:rungs``. The
ranking reads the same loss the 4-rate search selects by (``train-loss``, the last epoch's mean), only
earlier; whether the early ranking is the final one is what benchmarks/halving.py measures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._batched import BatchingUnsupported
from optuna_deelbo.train._halving import Rung, halving_rungs
from optuna_deelbo.tuning._batched import run_batched_trials
from optuna_deelbo.tuning._trial_queue import PlannedStudy
from optuna_deelbo.tuning.strategies._base import Strategy, suggest_hyperparameters
from optuna_deelbo.tuning.strategies.deelbo import DEELBoStrategy

__all__ = ["HalvingDEELBoStrategy"]


class HalvingDEELBoStrategy(DEELBoStrategy):
    """DE-ELBo runs for every learning rate side by side, the worse half stopped at each rung by training loss.

    Always batched (the members must train together to be ranked at one step); a task whose runs
    cannot be batched is refused before any trial is taken. The rungs count the planned learning
    rates, so a resumed study, where only the members still training are retried, makes the same cuts.

    Args:
        learning_rates: the grid (default :data:`~optuna_deelbo.tuning.strategies.LEARNING_RATES`).
    """

    name = "deelbo-halving"
    description = (
        "DE-ELBo: the learning rates trained side by side, the worse half stopped at 1/4 and 1/2 of the steps "
        "by training loss (2 runs for 4 rates), weight decay learned in-loop, no validation set"
    )

    def __init__(self, learning_rates: Sequence[float] | None = None) -> None:
        super().__init__(learning_rates, batched="on")

    @classmethod
    def from_options(
        cls, *, learning_rates: Sequence[float] | None = None, tpe_trials: int | None = None, batched: str = "auto"
    ) -> Strategy:
        if batched == "off":
            raise ConfigError(
                "deelbo-halving always trains its learning rates batched: leave --batched out or use deelbo"
            )
        return cls(learning_rates)

    def rungs(self, task: TaskSpec) -> tuple[Rung, ...]:
        """When the members are ranked and how many go on, for ``task``'s steps and log interval."""
        config = task.deelbo_train_config(self.learning_rates[0])
        return halving_rungs(len(self.learning_rates), config.steps, log_every=config.log_every)

    def work_off(
        self,
        study: PlannedStudy,
        task: TaskSpec,
        *,
        show_progress_bar: bool = False,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> int:
        """Every waiting trial in one batched run with the rungs (again for any retry queued meanwhile)."""
        ran = 0
        while True:
            try:
                taken = run_batched_trials(
                    study,
                    task,
                    lambda trial: suggest_hyperparameters(trial, self.lr_range)[0],
                    on_trial=on_trial,
                    rungs=self.rungs(task),
                )
            except BatchingUnsupported as exc:
                raise ConfigError(
                    f"deelbo-halving trains the learning rates side by side as one batched model, and this task's "
                    f"runs cannot be batched ({exc}); use deelbo or deelbo-descend"
                ) from exc
            if taken == 0:
                return ran
            ran += taken
