"""Strategy bookkeeping: what counts as a strategy's cost."""

from __future__ import annotations

import optuna
import pytest

import optuna_deelbo as od
from optuna_deelbo.tuning._study import reporting_overhead_s
from optuna_deelbo.tuning._trial_queue import requeue_interrupted
from optuna_deelbo.tuning.strategies import WEIGHT_DECAYS, DEELBoStrategy, GridStrategy
from optuna_deelbo.tuning.strategies.tpe import TrialSeededTPESampler


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


@pytest.fixture
def task(tiny_digits_task: od.TaskSpec) -> od.TaskSpec:
    return tiny_digits_task


def test_deelbo_plans_one_trial_per_learning_rate_and_learns_the_weight_decay(task: od.TaskSpec) -> None:
    strategy = DEELBoStrategy([0.1, 0.01])
    assert strategy.planned_params(task) == [{"lr": 0.1}, {"lr": 0.01}] and not strategy.retrain_winner
    sampler = strategy.sampler(task)
    assert isinstance(sampler, od.DEELBoSampler) and sampler.learned == {"weight_decay"}
    assert isinstance(sampler.base_sampler, optuna.samplers.GridSampler)


def test_grid_plans_every_pair_and_retrains_the_winner(task: od.TaskSpec) -> None:
    strategy = GridStrategy([0.1, 0.01])
    planned = strategy.planned_params(task)
    assert len(planned) == 2 * len(WEIGHT_DECAYS) == strategy.n_trials()
    assert {(p["lr"], p["weight_decay"]) for p in planned} == {(a, b) for a in (0.1, 0.01) for b in WEIGHT_DECAYS}
    assert strategy.retrain_winner and strategy.metric_name == "val_nll"


def test_tpe_proposals_depend_only_on_the_seed_and_trial_number() -> None:
    """TrialSeededTPESampler (a fresh public TPESampler per trial): trial k's proposal is the same in any run."""

    def proposals(order: list[int]) -> dict[int, float]:
        study = optuna.create_study(sampler=TrialSeededTPESampler(seed=3, n_startup_trials=2))
        out = {}
        for _ in order:
            trial = study.ask()
            out[trial.number] = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, out[trial.number] ** 2)
        return out

    first, again = proposals([0, 1, 2, 3]), proposals([0, 1, 2, 3])
    assert first == again
    assert len(set(first.values())) == 4
    assert TrialSeededTPESampler(seed=3).trial_seed(5) == (3 * 1_000_003 + 5) % 2**32


def test_a_retry_without_its_parameters_proposes_what_the_trial_it_retries_would_have() -> None:
    """CI, Optuna 5.0.0 pass (tests/test_resume.py, once): SIGTERM landed while trial 3 was sampling, so it failed
    with no parameters; its retry (another trial number) drew with another seed, and every later TPE proposal
    differed from the uninterrupted run's. A retry now draws with the seed of the trial it retries."""

    def fresh() -> optuna.Study:
        study = optuna.create_study(sampler=TrialSeededTPESampler(seed=3, n_startup_trials=2))
        for x in (0.2, 0.7, 0.4):
            study.add_trial(
                optuna.trial.create_trial(
                    params={"x": x}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=x**2
                )
            )
        return study

    uninterrupted = fresh()
    trial = uninterrupted.ask()
    assert trial.number == 3
    expected = trial.suggest_float("x", 0.0, 1.0)

    interrupted = fresh()
    interrupted.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # trial 3, no params
    interrupted.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, system_attrs={"failed_trial": 3, "retry_history": [3]}
        )
    )
    retry = interrupted.ask()
    assert retry.number == 4
    assert retry.suggest_float("x", 0.0, 1.0) == expected  # seed 4 proposed another value


@pytest.mark.parametrize("startup", [2, 10])  # TPE's own draws, and its random start-up sampler's
def test_a_retry_interrupted_between_two_parameters_draws_the_rest_as_the_uninterrupted_trial(startup: int) -> None:
    """CI, Optuna 5.0.0 pass (tests/test_resume.py, once more): SIGTERM landed after TPE's trial had drawn its lr
    and before its weight decay; the retry kept the lr (a stored parameter is not drawn again), so the sampler's
    stream was one draw behind and the weight decay differed (5.67e-5 vs 3.47e-4). The retry now replays the
    draws of the parameters it keeps."""
    box = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    box["wd"] = optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)

    def fresh() -> optuna.Study:
        study = optuna.create_study(sampler=TrialSeededTPESampler(seed=3, n_startup_trials=startup))
        for lr, wd in ((0.2, 1e-4), (0.01, 1e-3), (0.05, 1e-5)):
            study.add_trial(optuna.trial.create_trial(params={"lr": lr, "wd": wd}, distributions=box, value=lr))
        return study

    uninterrupted = fresh().ask()
    expected = {name: uninterrupted.suggest_float(name, d.low, d.high, log=True) for name, d in box.items()}
    interrupted = fresh()
    interrupted.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, params={"lr": expected["lr"]}, distributions={"lr": box["lr"]}
        )
    )
    assert requeue_interrupted(interrupted, fail_running=False) == 1
    retry = interrupted.ask()
    assert retry.number == 4 and "failed_trial" in interrupted.trials[4].system_attrs
    assert {name: retry.suggest_float(name, d.low, d.high, log=True) for name, d in box.items()} == expected


def test_every_strategy_is_one_row_of_the_name_table_and_get_strategy_builds_that_class() -> None:
    table = od.tuning.strategies.STRATEGIES
    assert tuple(table) == od.tuning.strategies.STRATEGY_NAMES and len(table) == 13
    for name, cls in table.items():
        assert cls.name == name
        built = od.tuning.get_strategy(name, tpe_trials=5)
        assert type(built) is cls
        assert getattr(built, "_trials", 5) == 5  # the TPE strategies take tpe_trials, the others ignore it
    lrs = (0.2, 0.02)
    assert od.tuning.get_strategy("grid", learning_rates=lrs).learning_rates == lrs
    assert od.tuning.get_strategy("deelbo-descend", learning_rates=(0.02, 0.2)).learning_rates == (0.2, 0.02)
    assert od.tuning.get_strategy("deelbo", batched="on").batched == "on"
    with pytest.raises(od.ConfigError, match="always trains its learning rates batched"):
        od.tuning.get_strategy("deelbo-halving", batched="off")
    with pytest.raises(od.ConfigError, match="searches no learning rate"):
        od.tuning.get_strategy("deelbo-lr-free", learning_rates=lrs)
    with pytest.raises(od.ConfigError, match="unknown strategy"):
        od.tuning.get_strategy("grid-search")
