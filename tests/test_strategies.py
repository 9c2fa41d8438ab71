"""Strategy bookkeeping: what counts as a strategy's cost."""

from __future__ import annotations

import optuna
import pytest

from optuna_deelbo.tuning._study import reporting_overhead_s


def _trial(value: float, **attrs: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=value, user_attrs=attrs)


def test_reporting_overhead_keeps_only_the_chosen_models_test_evaluation() -> None:
    trials = [
        _trial(1.0, **{"time:test_eval_s": 2.0}),
        _trial(0.5, **{"time:test_eval_s": 3.0}),
        _trial(0.7, **{"time:test_eval_s": 4.0}),
    ]
    assert reporting_overhead_s(trials, trials[1]) == pytest.approx(6.0)
    assert reporting_overhead_s(trials, trials[0]) == pytest.approx(7.0)


def test_reporting_overhead_is_zero_without_test_evaluations() -> None:
    trials = [_trial(1.0), _trial(0.5, **{"time:train_s": 9.0})]
    assert reporting_overhead_s(trials, trials[1]) == 0.0
