"""deelbo-descend (issue 33, route c): learning rates from the largest down, stopping once the score gets worse."""

from __future__ import annotations

import optuna
import pytest
from _docs import run_doc_block
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

import optuna_deelbo as od
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning.strategies import DescendingDEELBoStrategy, get_strategy
from optuna_deelbo.tuning.strategies.descend import descend_skip_reason, descend_stop

scores = st.lists(st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)), max_size=6)


@settings(max_examples=examples(200), deadline=None)
@given(scores)
def test_the_stop_rule_stops_exactly_once_the_last_score_is_no_better_than_an_earlier_one(
    values: list[float | None],
) -> None:
    scored = [v for v in values if v is not None]
    expected = len(scored) >= 2 and any(scored[-1] >= earlier for earlier in scored[:-1])
    assert descend_stop(values) is expected


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=6, unique=True))
def test_a_score_falling_all_the_way_down_never_stops(values: list[float]) -> None:
    falling = sorted(values, reverse=True)
    assert not any(descend_stop(falling[: k + 1]) for k in range(len(falling)))


def test_no_stop_before_two_scored_runs_and_a_diverged_run_counts_as_none() -> None:
    assert not descend_stop([])
    assert not descend_stop([0.5])
    assert not descend_stop([None, 0.5])  # the largest rate diverged: go on down
    assert not descend_stop([0.5, None])
    assert descend_stop([0.5, None, 0.6])
    assert descend_stop([0.5, 0.5])  # no better is worse: stop


def test_the_rates_run_largest_first_and_are_never_batched() -> None:
    strategy = get_strategy("deelbo-descend", learning_rates=[0.01, 0.1, 0.03])
    assert isinstance(strategy, DescendingDEELBoStrategy)
    assert strategy.learning_rates == (0.1, 0.03, 0.01) and strategy.batched == "off"


def _finished(study: optuna.Study, lr: float, value: float | None) -> None:
    state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
    distribution = optuna.distributions.FloatDistribution(0.003, 0.1, log=True)
    trial = optuna.trial.create_trial(state=state, value=value, params={"lr": lr}, distributions={"lr": distribution})
    study.add_trial(trial)


def test_a_rate_below_a_worse_run_is_pruned_without_training(tiny_digits_task: od.TaskSpec) -> None:
    study = optuna.create_study()
    _finished(study, 0.1, 0.40)
    _finished(study, 0.03, 0.45)  # worse than 0.1: stop
    study.enqueue_trial({"lr": 0.01, "weight_decay": 1e-3})
    objective = DescendingDEELBoStrategy().objective(tiny_digits_task)
    study.optimize(objective, n_trials=1)
    skipped = study.trials[-1]
    assert skipped.state == TrialState.PRUNED and "time:train_s" not in skipped.user_attrs  # nothing trained
    reason = skipped.user_attrs[A.FAILURE_REASON]
    assert reason.startswith("skipped: the selection score got worse") and "lr=0.1: 0.4, lr=0.03: 0.45" in reason


def test_a_rate_below_an_improving_run_trains(tiny_digits_task: od.TaskSpec) -> None:
    study = optuna.create_study()
    _finished(study, 0.1, 0.50)
    _finished(study, 0.03, 0.45)  # better than 0.1: go on
    study.enqueue_trial({"lr": 0.01, "weight_decay": 1e-3})
    study.optimize(DescendingDEELBoStrategy().objective(tiny_digits_task), n_trials=1)
    assert study.trials[-1].state == TrialState.COMPLETE


def _states(storage: optuna.storages.BaseStorage, name: str) -> list[tuple[float, str, float | None]]:
    """``(lr, state, value)`` of the study's trials in number order, retried ones left out."""
    trials = optuna.load_study(study_name=name, storage=storage).trials
    return [(t.params["lr"], t.state.name, t.value) for t in trials if t.state != TrialState.FAIL]


def test_a_search_interrupted_after_its_first_run_resumes_to_the_uninterrupted_one(
    tiny_digits_task: od.TaskSpec,
) -> None:
    strategy = DescendingDEELBoStrategy()
    reference = optuna.storages.InMemoryStorage()
    whole = od.tuning.run_strategy(strategy, tiny_digits_task, reference, "whole")
    states = _states(reference, "whole")
    assert [lr for lr, _, _ in states] == [0.1, 0.03, 0.01, 0.003]
    trained = [s for s in states if s[1] == "COMPLETE"]
    skipped = [s for s in states if s[1] == "PRUNED"]
    assert states[: len(trained)] == trained  # the skipped rates are the smallest ones
    assert len(trained) >= 2 or not skipped
    assert whole.best_params["lr"] == min(trained, key=lambda s: s[2] or 0.0)[0]

    storage = optuna.storages.InMemoryStorage()

    def stop_after_the_first(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        od.tuning.run_strategy(strategy, tiny_digits_task, storage, "cut", on_trial=stop_after_the_first)
    resumed = od.tuning.run_strategy(strategy, tiny_digits_task, storage, "cut", if_exists="resume")
    assert _states(storage, "cut") == states and resumed.best_params == whole.best_params


def test_the_rule_in_a_users_own_objective_trains_only_down_to_the_first_worse_rate() -> None:
    """The docs' recipe for an own loop / Trainer / Lightning objective (scores set by hand): rates largest first,
    a trial pruned when descend_skip_reason gives a reason. Scores fall from 0.1 to 0.03, rise at 0.01."""
    lrs = [0.1, 0.03, 0.01, 0.003]
    score = {0.1: 0.5, 0.03: 0.4, 0.01: 0.45, 0.003: 0.3}  # 0.003 would be best: the rule never gets there
    trained: list[float] = []
    study = optuna.create_study(sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"lr": lrs})))
    for lr in sorted(lrs, reverse=True):
        study.enqueue_trial({"lr": lr})

    def objective(trial: optuna.trial.Trial) -> float:
        lr = trial.suggest_float("lr", min(lrs), max(lrs), log=True)
        reason = descend_skip_reason(trial, lr)
        if reason is not None:
            raise optuna.TrialPruned(reason)
        trained.append(lr)
        return score[lr]

    study.optimize(objective, n_trials=len(lrs))
    assert trained == [0.1, 0.03, 0.01]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert study.best_params["lr"] == 0.03


def test_the_docs_recipe_runs_and_trains_the_rates_largest_first_down_to_the_first_worse_one() -> None:
    study = run_doc_block("descend-own-objective", elsewhere=True)["study"]
    states = [t.state for t in study.trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert states == [TrialState.COMPLETE] * len(done) + [TrialState.PRUNED] * (len(states) - len(done))
    lrs = [t.params["lr"] for t in done]
    assert lrs == sorted(lrs, reverse=True) and len(states) == 4
    if len(done) < 4:  # pruned only after a rate scored worse than the one above it
        assert done[-1].value is not None and done[-2].value is not None and done[-1].value > done[-2].value
