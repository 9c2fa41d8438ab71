"""Early stopping with patience and the retraining rules of Goodfellow et al. §7.8 (Algorithms 7.2, 7.3)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator

import pytest

from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo.train._early_stopping import ContinueResult, EarlyStopping, continue_until, retrain_steps

# Validation curve evaluated every 10 steps: falls, plateaus, has a NaN, bottoms out at step 70, rises.
CURVE = [3.0, 2.0, 2.0, 1.5, math.nan, 1.2, 1.0, 1.0, 1.1, math.inf, 1.3, 1.4, 0.1]
TRAIN = [2.9, 1.9, 1.8, 1.3, 1.25, 1.0, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4]


def _run(stopper: EarlyStopping, curve: list[float], train: list[float] | None = None) -> list[bool]:
    """Feed the curve every 10 steps until the stopper says stop; the decisions made."""
    decisions = []
    for i, loss in enumerate(curve):
        decision = stopper.update(10 * (i + 1), loss, None if train is None else train[i])
        decisions.append(decision)
        if decision:
            break
    return decisions


def test_stops_patience_updates_after_best() -> None:
    stopper = EarlyStopping(patience=4)
    decisions = _run(stopper, CURVE, TRAIN)
    # best 1.0 at update 7 (step 70); updates 8 (plateau), 9, 10 (inf), 11 do not improve -> stop at 110
    assert decisions == [False] * 10 + [True]
    assert stopper.best_step == 70 and stopper.best_val_loss == 1.0
    assert stopper.train_loss_at_best == 0.7
    assert stopper.stopped_step == 110 and stopper.stopped


def test_plateau_and_nan_count_as_no_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    decisions = _run(stopper, CURVE, TRAIN)
    # update 3 equals the best (plateau) then 4 improves; 5 is NaN then 6 improves; best at 7 (step 70),
    # then 8 (plateau) and 9 do not improve: stop at step 90, never seeing the later 0.1
    assert decisions == [False] * 8 + [True]
    assert (stopper.best_step, stopper.stopped_step) == (70, 90)

    plateau = EarlyStopping(patience=1)
    assert _run(plateau, [3.0, 2.0, 2.0, 1.0]) == [False, False, True]
    assert (plateau.best_step, plateau.stopped_step) == (20, 30)


def test_minus_inf_is_not_an_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    assert _run(stopper, [1.0, -math.inf, 0.5, -math.inf, math.inf]) == [False, False, False, False, True]
    assert (stopper.best_step, stopper.best_val_loss, stopper.stopped_step) == (30, 0.5, 50)


def test_patience_one_stops_at_first_non_improvement() -> None:
    stopper = EarlyStopping(patience=1)
    assert _run(stopper, [5.0, 4.0, math.nan]) == [False, False, True]
    assert (stopper.best_step, stopper.stopped_step) == (20, 30)


def test_min_delta_is_respected() -> None:
    # each step improves by 0.05: an improvement with min_delta 0, not with min_delta 0.1
    curve = [1.0, 0.95, 0.90, 0.85, 0.80, 0.5]
    loose = EarlyStopping(patience=2)
    assert not any(_run(loose, curve))
    assert loose.best_step == 60 and loose.stopped_step is None
    strict = EarlyStopping(patience=2, min_delta=0.1)
    assert _run(strict, curve) == [False, False, True]
    assert (strict.best_step, strict.best_val_loss, strict.stopped_step) == (10, 1.0, 30)
    # 0.88 is more than 0.1 below 1.0: the counter resets and the best moves
    reset = EarlyStopping(patience=2, min_delta=0.1)
    assert _run(reset, [1.0, 0.95, 0.88, 0.85, 0.80]) == [False, False, False, False, True]
    assert (reset.best_step, reset.stopped_step) == (30, 50)


def test_all_nan_stops_without_a_best_step() -> None:
    stopper = EarlyStopping(patience=3)
    assert _run(stopper, [math.nan] * 5) == [False, False, True]
    assert stopper.best_step is None and stopper.best_val_loss == math.inf
    assert stopper.train_loss_at_best is None
    with pytest.raises(ConfigError, match="best_step must be a positive integer, got None"):
        retrain_steps(stopper.best_step)  # type: ignore[arg-type]


def test_train_loss_at_best_is_none_when_not_given_at_best() -> None:
    stopper = EarlyStopping(patience=3)
    stopper.update(1, 2.0, 1.5)
    stopper.update(2, 1.0)
    assert (stopper.best_step, stopper.train_loss_at_best) == (2, None)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"patience": 0}, "patience must be a positive integer, got 0"),
        ({"patience": 2.5}, "patience must be a positive integer, got 2.5"),
        ({"patience": True}, "patience must be a positive integer, got True"),
        ({"patience": 3, "min_delta": -0.1}, "min_delta must be a finite number >= 0, got -0.1"),
        ({"patience": 3, "min_delta": math.nan}, "min_delta must be a finite number >= 0, got nan"),
    ],
)
def test_bad_early_stopping_settings(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        EarlyStopping(**kwargs)  # type: ignore[arg-type]


def test_bad_updates() -> None:
    stopper = EarlyStopping(patience=1)
    stopper.update(5, 1.0)
    with pytest.raises(ConfigError, match="must strictly increase, got step 5 after step 5"):
        stopper.update(5, 0.5)
    with pytest.raises(ConfigError, match=re.escape("step must be an integer >= 1 (steps are 1-based), got 0")):
        stopper.update(0, 0.5)
    with pytest.raises(ConfigError, match=re.escape("val_loss must be a real number, got '0.5'")):
        stopper.update(6, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train_loss must be a real number, got True"):
        stopper.update(6, 0.5, True)
    assert stopper.best_step == 5 and stopper.last_step == 5  # rejected updates change nothing
    assert stopper.update(6, 2.0) is True
    with pytest.raises(ConfigError, match="already stopped at step 6; got update at step 7"):
        stopper.update(7, 0.1)


def test_retrain_steps_is_best_step() -> None:
    stopper = EarlyStopping(patience=4)
    _run(stopper, CURVE, TRAIN)
    assert stopper.best_step is not None
    assert retrain_steps(stopper.best_step) == 70
    assert retrain_steps(1) == 1
    for bad in (0, -5, 2.5):
        with pytest.raises(ConfigError, match=f"best_step must be a positive integer, got {bad}"):
            retrain_steps(bad)  # type: ignore[arg-type]


def _scripted(losses: list[float]) -> tuple[Callable[[], float], list[int]]:
    """A step_fn that returns the scripted losses in turn, and the list counting its calls."""
    calls: list[int] = []
    feed: Iterator[float] = iter(losses)

    def step_fn() -> float:
        calls.append(1)
        return next(feed)

    return step_fn, calls


def test_continue_until_stops_at_first_loss_at_or_below_target() -> None:
    step_fn, calls = _scripted([1.3, 1.1, 0.9, 0.7, 0.72, 0.6, 0.5])
    result = continue_until(0.7, step_fn, max_steps=100, check_every=5)
    assert result == ContinueResult(
        steps=20, reached=True, final_loss=0.7, history=[(5, 1.3), (10, 1.1), (15, 0.9), (20, 0.7)]
    )
    assert len(calls) == 4


def test_continue_until_uses_early_stopped_train_loss() -> None:
    stopper = EarlyStopping(patience=4)
    _run(stopper, CURVE, TRAIN)
    assert stopper.train_loss_at_best == 0.7
    step_fn, _ = _scripted([1.0, 0.8, 0.69, 0.5])
    result = continue_until(stopper.train_loss_at_best, step_fn, max_steps=10)
    assert (result.steps, result.reached, result.final_loss) == (3, True, 0.69)


def test_continue_until_hits_the_cap() -> None:
    step_fn, calls = _scripted([1.0 - 0.01 * i for i in range(100)])  # never reaches 0.1 within the cap
    result = continue_until(0.1, step_fn, max_steps=12, check_every=3)
    assert not result.reached
    assert result.steps == 12 and len(calls) == 4
    assert result.history == [(3, 1.0), (6, 0.99), (9, 0.98), (12, 0.97)]
    assert result.final_loss == 0.97


def test_continue_until_checks_before_training_when_given_initial_loss() -> None:
    step_fn, calls = _scripted([0.1])
    result = continue_until(0.5, step_fn, max_steps=10, initial_loss=0.4)
    assert result == ContinueResult(steps=0, reached=True, final_loss=0.4, history=[])
    assert calls == []
    result = continue_until(0.5, step_fn, max_steps=10, initial_loss=0.6)
    assert (result.steps, result.reached, len(calls)) == (1, True, 1)


def test_continue_until_non_finite_loss_is_divergence() -> None:
    step_fn, _ = _scripted([1.0, math.nan])
    with pytest.raises(TrainingDiverged, match="non-finite loss nan after 4 steps"):
        continue_until(0.5, step_fn, max_steps=10, check_every=2)


@pytest.mark.parametrize(
    ("target", "kwargs", "words"),
    [
        (math.nan, {"max_steps": 10}, "target_loss must be a finite number, got nan"),
        (None, {"max_steps": 10}, "target_loss must be a real number, got None"),
        (0.5, {"max_steps": 0}, "max_steps must be a positive integer, got 0"),
        (0.5, {"max_steps": 10, "check_every": 0}, "check_every must be a positive integer, got 0"),
        (0.5, {"max_steps": 10, "check_every": 3}, "max_steps must be a multiple of check_every (3), got 10"),
        (0.5, {"max_steps": 10, "initial_loss": "x"}, "initial_loss must be a real number, got 'x'"),
    ],
)
def test_bad_continue_arguments(target: object, kwargs: dict[str, object], words: str) -> None:
    step_fn, calls = _scripted([0.0])
    with pytest.raises(ConfigError, match=re.escape(words)):
        continue_until(target, step_fn, **kwargs)  # type: ignore[arg-type]
    assert calls == []


def test_continue_until_rejects_bad_step_fn() -> None:
    with pytest.raises(ConfigError, match="step_fn must be callable, got 3"):
        continue_until(0.5, 3, max_steps=10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="the loss returned by step_fn must be a real number, got 'low'"):
        continue_until(0.5, lambda: "low", max_steps=10)  # type: ignore[arg-type, return-value]
