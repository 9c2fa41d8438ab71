"""_optuna_trial.py: the loop's one door to Optuna reports every value and prunes when the pruner says so."""

from __future__ import annotations

import optuna
import pytest

from optuna_deelbo._optuna_trial import report_or_prune


def test_values_are_reported_and_a_bad_one_is_pruned() -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    report_or_prune(trial, 0.5, 1)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at step 2 with intermediate value 3"):
        report_or_prune(trial, 3.0, 2)
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 3.0}
