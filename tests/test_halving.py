"""deelbo-halving (issue 33, route a): the rungs, the cuts, the bookkeeping and the resume of a half-pruned study."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest
import torch
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

import optuna_deelbo as od
from optuna_deelbo.train import _batched as batched_training
from optuna_deelbo.train import halving_cost, halving_rungs
from optuna_deelbo.train._halving import Rung, rung_cut
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._checkpoints import Checkpointing
from optuna_deelbo.tuning.strategies import DEELBoStrategy, HalvingDEELBoStrategy


def test_four_rates_are_cut_at_a_quarter_and_a_half_and_cost_two_runs() -> None:
    assert halving_rungs(4, 400) == (Rung(100, 2), Rung(200, 1))
    assert halving_cost(4, halving_rungs(4, 400), 400) == 2.0
    assert halving_rungs(4, 300) == (Rung(80, 2), Rung(150, 1))  # rounded to log steps
    assert halving_rungs(8, 800) == (Rung(100, 4), Rung(200, 2), Rung(400, 1))
    assert halving_cost(8, halving_rungs(8, 800), 800) == 2.5


def test_no_rung_for_one_member_or_runs_too_short_to_rank() -> None:
    assert halving_rungs(1, 400) == ()
    assert halving_rungs(4, 10) == ()
    assert halving_cost(4, (), 10) == 4.0


def test_bad_halving_settings_are_refused() -> None:
    with pytest.raises(od.ConfigError, match="halving needs"):
        halving_rungs(0, 100)
    with pytest.raises(od.ConfigError, match="eta >= 2"):
        halving_rungs(4, 100, eta=1)


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(1, 40), st.integers(1, 5000), st.sampled_from([1, 5, 10, 50]))
def test_rungs_go_forward_keep_fewer_and_never_cost_more_than_full_runs(members: int, steps: int, log: int) -> None:
    rungs = halving_rungs(members, steps, log_every=log)
    assert [r.step for r in rungs] == sorted({r.step for r in rungs})
    assert all(0 < r.step < steps and r.step % log == 0 for r in rungs)
    keeps = [r.keep for r in rungs]
    assert keeps == sorted(keeps, reverse=True) and all(1 <= k < members for k in keeps)
    assert 1.0 <= halving_cost(members, rungs, steps) <= members


def test_a_cut_keeps_the_lowest_losses_a_non_finite_one_last_ties_to_the_earlier() -> None:
    assert rung_cut([0.3, 0.1, 0.2, 0.4], 2) == [0, 3]
    assert rung_cut([math.nan, 0.5, 0.5, math.inf], 1) == [2, 0, 3]
    assert rung_cut([0.1], 1) == []


@pytest.fixture(scope="module")
def halving_task() -> od.TaskSpec:
    """Digits N = 50 with 40 steps of 16: rungs after steps 10 (keep 2) and 20 (keep 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return od.digits_task(50, steps=40, batch_size=16, pretrain_steps=10)[0]
    finally:
        torch.set_num_threads(previous)


def _trials(storage: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).trials


def test_halving_trains_one_survivor_to_the_end_and_says_why_the_others_stopped(halving_task: od.TaskSpec) -> None:
    assert HalvingDEELBoStrategy().rungs(halving_task) == (Rung(10, 2), Rung(20, 1))
    storage = optuna.storages.InMemoryStorage()
    result = od.tuning.run_strategy(HalvingDEELBoStrategy(), halving_task, storage, "halving")
    trials = _trials(storage, "halving")
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    (survivor,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert result.best_params["lr"] == survivor.params["lr"]
    for t in trials:
        rungs = t.user_attrs[A.HALVING_RUNGS]
        assert [step for step, _ in rungs] == ([10, 20] if len(rungs) == 2 else [10])
        if t.state == TrialState.PRUNED:
            assert t.user_attrs[A.FAILURE_REASON].startswith(f"successive halving at step {rungs[-1][0]}")
            assert t.user_attrs[A.TIME_TRAIN_S] > 0
    # the two cut at step 10 had the highest losses there; of the two left, the higher loss at step 20 went
    at_10 = {t.number: t.user_attrs[A.HALVING_RUNGS][0][1] for t in trials}
    kept = sorted(at_10, key=at_10.__getitem__)[:2]
    assert {t.number for t in trials if len(t.user_attrs[A.HALVING_RUNGS]) == 2} == set(kept)
    at_20 = {t.number: t.user_attrs[A.HALVING_RUNGS][1][1] for t in trials if t.number in kept}
    assert survivor.number == min(at_20, key=at_20.__getitem__)
    # the shares of the batch's seconds add up to the batched training's wall-clock
    total = sum(t.user_attrs[A.TIME_TRAIN_S] for t in trials)
    assert 0 < total <= result.tuning_s


def test_the_survivor_is_the_run_it_would_be_without_cuts(halving_task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    od.tuning.run_strategy(HalvingDEELBoStrategy(), halving_task, storage, "halving")
    od.tuning.run_strategy(DEELBoStrategy(batched="on"), halving_task, storage, "full")
    (survivor,) = [t for t in _trials(storage, "halving") if t.state == TrialState.COMPLETE]
    (same,) = [t for t in _trials(storage, "full") if t.params["lr"] == survivor.params["lr"]]
    assert survivor.value == pytest.approx(same.value, rel=1e-6)
    assert survivor.user_attrs[A.TEST_ACCURACY] == pytest.approx(same.user_attrs[A.TEST_ACCURACY])


def test_a_study_stopped_after_the_first_cut_resumes_to_the_uninterrupted_result(
    halving_task: od.TaskSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = optuna.storages.InMemoryStorage()
    od.tuning.run_strategy(HalvingDEELBoStrategy(), halving_task, storage, "reference")
    reference = {t.params["lr"]: (t.state, t.user_attrs[A.HALVING_RUNGS]) for t in _trials(storage, "reference")}
    winner_value = next(t.value for t in _trials(storage, "reference") if t.state == TrialState.COMPLETE)

    rung = batched_training._rung

    def stop_at_the_second_rung(step: int, *args: object, **kwargs: object) -> None:
        if step == 20:
            raise KeyboardInterrupt
        rung(step, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batched_training, "_rung", stop_at_the_second_rung)
    with pytest.raises(KeyboardInterrupt):
        od.tuning.run_strategy(HalvingDEELBoStrategy(), halving_task, storage, "stopped")
    states = sorted(t.state.name for t in _trials(storage, "stopped"))
    assert states == ["FAIL", "FAIL", "PRUNED", "PRUNED"]  # the cut ones kept, the two training failed
    monkeypatch.setattr(batched_training, "_rung", rung)
    result = od.tuning.run_strategy(HalvingDEELBoStrategy(), halving_task, storage, "stopped", if_exists="resume")
    trials = _trials(storage, "stopped")
    assert len(trials) == 6  # only the two still training were retried
    final = {t.params["lr"]: (t.state, t.user_attrs[A.HALVING_RUNGS]) for t in trials if t.state != TrialState.FAIL}
    assert final.keys() == reference.keys()
    for lr, (state, rungs) in reference.items():
        assert final[lr][0] == state
        assert [step for step, _ in final[lr][1]] == [step for step, _ in rungs]  # the same rungs reached
        assert [loss for _, loss in final[lr][1]] == pytest.approx([loss for _, loss in rungs], rel=1e-5)
    resumed_value = next(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert resumed_value == pytest.approx(winner_value, rel=1e-5)
    assert result.best_params["lr"] == next(lr for lr, (s, _) in reference.items() if s == TrialState.COMPLETE)


def test_halving_without_batching_is_refused_in_one_line() -> None:
    with pytest.raises(od.ConfigError, match="always trains its learning rates batched"):
        od.tuning.get_strategy("deelbo-halving", batched="off")
    assert isinstance(od.tuning.get_strategy("deelbo-halving"), HalvingDEELBoStrategy)


def test_a_task_whose_runs_cannot_be_batched_is_refused_before_a_trial_is_taken(
    halving_task: od.TaskSpec, tmp_path: Path
) -> None:
    storage = optuna.storages.InMemoryStorage()
    task = dataclasses.replace(halving_task, checkpointing=Checkpointing.filesystem(tmp_path, every=15))
    with pytest.raises(od.ConfigError, match=r"cannot be batched.*checkpointing.*use deelbo or deelbo-descend"):
        od.tuning.run_strategy(HalvingDEELBoStrategy(), task, storage, "refused")
    assert {t.state for t in _trials(storage, "refused")} == {TrialState.WAITING}
