"""Lambda schedules: pull-down / pull-up / constant step schedules and the accuracy-gap feedback rule."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule, constant, pull_down, pull_up

VALUES = (1e-3, 1e-2, 1e-4)  # deliberately unsorted


def test_pull_down_sequence_step_by_step() -> None:
    schedule = pull_down(VALUES, 3)
    assert schedule.values == (1e-2, 1e-3, 1e-4)
    assert schedule.total_steps == 9
    got = [schedule.value_at(step) for step in range(1, 10)]
    assert got == [1e-2] * 3 + [1e-3] * 3 + [1e-4] * 3
    assert schedule.trajectory() == [(1, 1e-2), (4, 1e-3), (7, 1e-4)]


def test_pull_up_sequence_step_by_step() -> None:
    schedule = pull_up(VALUES, 3)
    got = [schedule.value_at(step) for step in range(1, 10)]
    assert got == [1e-4] * 3 + [1e-3] * 3 + [1e-2] * 3
    assert schedule.trajectory() == [(1, 1e-4), (4, 1e-3), (7, 1e-2)]


def test_steps_beyond_total_keep_last_value() -> None:
    schedule = pull_down(VALUES, 2)
    assert [schedule.value_at(step) for step in (6, 7, 100)] == [1e-4, 1e-4, 1e-4]


def test_step_schedule_keeps_given_order_and_accepts_a_list() -> None:
    schedule = StepSchedule([0.5, 0.0, 0.25], 1)  # type: ignore[arg-type]
    assert schedule.values == (0.5, 0.0, 0.25)
    assert [schedule.value_at(s) for s in (1, 2, 3)] == [0.5, 0.0, 0.25]


def test_constant_matches_compared_schedule_length() -> None:
    down = pull_down((1e-2, 1e-3, 1e-4, 1e-5), 7)
    base = constant(1e-3, down.total_steps)
    assert base.total_steps == down.total_steps == 28
    assert base.values == (1e-3,)
    assert {base.value_at(step) for step in range(1, 29)} == {1e-3}
    assert base.trajectory() == [(1, 1e-3)]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: StepSchedule((), 3), "must not be empty"),
        (lambda: StepSchedule((1e-3, -1e-4), 3), "schedule value #1"),
        (lambda: StepSchedule((math.nan,), 3), "schedule value #0"),
        (lambda: StepSchedule((math.inf,), 3), "schedule value #0"),
        (lambda: StepSchedule((1e-3,), 0), "steps_per_value must be a positive integer, got 0"),
        (lambda: StepSchedule((1e-3,), 1.5), "steps_per_value must be a positive integer, got 1.5"),  # type: ignore[arg-type]
        (lambda: pull_down((1e-3, math.nan), 2), "schedule value #1"),
        (lambda: pull_up("abc", 2), "must be a sequence of numbers"),  # type: ignore[arg-type]
        (lambda: constant(-1.0, 5), "schedule value #0 must be a finite number >= 0, got -1.0"),
        (lambda: constant(1e-3, 0), "steps_per_value must be a positive integer"),
    ],
)
def test_bad_step_schedules(make: Callable[[], object], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        make()


@pytest.mark.parametrize("step", [0, -3, 1.0, True])
def test_value_at_rejects_bad_steps(step: object) -> None:
    with pytest.raises(ConfigError, match="step must be an integer >= 1"):
        pull_down(VALUES, 3).value_at(step)  # type: ignore[arg-type]


def test_feedback_moves_up_when_train_runs_ahead() -> None:
    rule = AdaptiveFeedback(1e-4, every=10)
    assert rule.value == 1e-4
    for k, (train, val) in enumerate([(0.80, 0.70), (0.90, 0.75), (0.95, 0.78)], start=1):
        assert rule.is_due(10 * k)
        assert rule.update(10 * k, train, val) == pytest.approx(1e-4 * 2**k)
    assert rule.value == pytest.approx(8e-4)
    assert [row[0] for row in rule.history] == [10, 20, 30]
    assert rule.history[0] == (10, pytest.approx(2e-4), 0.80, 0.70)


def test_feedback_moves_down_when_close_and_when_val_is_ahead() -> None:
    rule = AdaptiveFeedback(1e-3, factor=4.0)
    assert rule.update(50, 0.800, 0.795) == pytest.approx(2.5e-4)  # gap 0.005 < close
    assert rule.update(100, 0.70, 0.75) == pytest.approx(6.25e-5)  # val ahead: gap < close
    assert len(rule.history) == 2


def test_feedback_keeps_value_in_between() -> None:
    rule = AdaptiveFeedback(1e-3)
    for k in range(1, 4):
        assert rule.update(50 * k, 0.83, 0.80) == 1e-3  # close (0.01) <= gap 0.03 <= margin (0.05)
    assert rule.value == 1e-3


def test_feedback_clips_to_bounds() -> None:
    rule = AdaptiveFeedback(1e-2, lower=1e-3, upper=2e-2)
    assert rule.update(1, 1.0, 0.0) == 2e-2
    assert rule.update(2, 1.0, 0.0) == 2e-2
    for step in range(3, 10):
        rule.update(step, 0.5, 0.5)
    assert rule.value == 1e-3


def test_is_due() -> None:
    rule = AdaptiveFeedback(1e-3, every=25)
    assert [s for s in range(1, 101) if rule.is_due(s)] == [25, 50, 75, 100]


_accuracy = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=examples(150), deadline=None)
@given(
    script=st.lists(st.tuples(_accuracy, _accuracy), min_size=1, max_size=40),
    lower_exp=st.floats(min_value=-8.0, max_value=-3.0),
    span_exp=st.floats(min_value=0.0, max_value=4.0),
    position=st.floats(min_value=0.0, max_value=1.0),
    factor=st.floats(min_value=1.01, max_value=10.0),
)
def test_feedback_follows_rule_and_stays_in_bounds(
    script: list[tuple[float, float]], lower_exp: float, span_exp: float, position: float, factor: float
) -> None:
    lower = 10.0**lower_exp
    upper = lower * 10.0**span_exp
    initial = min(upper, max(lower, lower * (upper / lower) ** position))
    rule = AdaptiveFeedback(initial, factor=factor, lower=lower, upper=upper, every=7)
    previous = rule.value
    for k, (train, val) in enumerate(script, start=1):
        value = rule.update(7 * k, train, val)
        assert lower <= value <= upper
        gap = train - val
        if gap > rule.margin:
            assert value == min(upper, previous * factor)
        elif gap < rule.close:
            assert value == max(lower, previous / factor)
        else:
            assert value == previous
        assert rule.value == value
        assert rule.history[-1] == (7 * k, value, train, val)
        previous = value
    assert len(rule.history) == len(script)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"margin": 0.01, "close": 0.01}, "close must be < margin, got close=0.01 and margin=0.01"),
        ({"margin": 0.02, "close": 0.05}, "close must be < margin"),
        ({"margin": 1.5}, "margin is an accuracy gap and must be <= 1, got 1.5"),
        ({"close": -0.01}, "close must be a finite number >= 0, got -0.01"),
        ({"margin": math.nan}, "margin must be a finite number >= 0, got nan"),
        ({"factor": 1.0}, "factor must be > 1, got 1.0"),
        ({"factor": 0.5}, "factor must be > 1, got 0.5"),
        ({"factor": math.inf}, "factor must be a positive finite number, got inf"),
        ({"lower": 0.0}, "lower must be a positive finite number, got 0.0"),
        ({"initial": 1.0}, "need lower <= initial <= upper, got lower=1e-07, initial=1.0, upper=0.1"),
        ({"initial": 1e-9}, "need lower <= initial <= upper"),
        ({"initial": 0.0}, "initial lambda must be a positive finite number, got 0.0"),
        ({"lower": 1e-2, "upper": 1e-3}, "need lower <= initial <= upper"),
        ({"every": 0}, "every must be a positive integer, got 0"),
    ],
)
def test_bad_feedback_settings(kwargs: dict[str, float], words: str) -> None:
    args = {"initial": 1e-3, **kwargs}
    initial = args.pop("initial")
    with pytest.raises(ConfigError, match=re.escape(words)):
        AdaptiveFeedback(initial, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("train", "val", "words"),
    [
        (1.2, 0.5, "train_accuracy must be a fraction in [0, 1], got 1.2"),
        (0.5, -0.1, "val_accuracy must be a finite number >= 0, got -0.1"),
        (math.nan, 0.5, "train_accuracy must be a finite number >= 0, got nan"),
        (0.5, 100, "val_accuracy must be a fraction in [0, 1], got 100"),
    ],
)
def test_bad_accuracies(train: float, val: float, words: str) -> None:
    rule = AdaptiveFeedback(1e-3)
    with pytest.raises(ConfigError, match=re.escape(words)):
        rule.update(50, train, val)
    assert rule.history == [] and rule.value == 1e-3


def test_update_steps_must_increase() -> None:
    rule = AdaptiveFeedback(1e-3)
    rule.update(50, 0.9, 0.5)
    with pytest.raises(ConfigError, match="must strictly increase, got step 50 after step 50"):
        rule.update(50, 0.9, 0.5)
    with pytest.raises(ConfigError, match="got step 40 after step 50"):
        rule.update(40, 0.9, 0.5)
    with pytest.raises(ConfigError, match="step must be an integer >= 1"):
        rule.update(0, 0.9, 0.5)
    assert len(rule.history) == 1
