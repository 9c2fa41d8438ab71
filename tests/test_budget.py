"""Figure 2's budget curves: exact subset means worked out by hand, random draws, incumbents, bad input."""

from __future__ import annotations

import math

import pytest

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.report._budget import CurvePoint, incumbent_curve, incumbents, subsample_curve

# Three configurations: config 1 has the best score, config 0 the worst.
SCORES = [0.3, 0.1, 0.2]
ACCURACIES = [0.5, 0.9, 0.7]
COSTS = [1.0, 2.0, 3.0]
RETRAIN = [10.0, 20.0, 30.0]


def test_every_subset_is_used_when_there_are_few_and_the_means_are_exact() -> None:
    points = subsample_curve(SCORES, ACCURACIES, COSTS, RETRAIN, draws=500)
    assert [p.size for p in points] == [1, 2, 3]
    assert [p.draws for p in points] == [3, 3, 1]
    # b = 1: each config alone, chosen; cost = its trial + its retrain.
    assert points[0].accuracy == pytest.approx((0.5 + 0.9 + 0.7) / 3)
    assert points[0].cost_s == pytest.approx((11 + 22 + 33) / 3)
    # b = 2: {0,1} -> 1 (0.9, 3 + 20), {0,2} -> 2 (0.7, 4 + 30), {1,2} -> 1 (0.9, 5 + 20).
    assert points[1].accuracy == pytest.approx((0.9 + 0.7 + 0.9) / 3)
    assert points[1].cost_s == pytest.approx((23 + 34 + 25) / 3)
    # b = n: the search's own winner, all trials paid.
    assert points[2] == CurvePoint(3, 6.0 + 20.0, 0.9, 1)


def test_random_draws_are_seeded_and_stay_between_worst_and_best() -> None:
    n = 24
    scores = [float((7 * i) % n) for i in range(n)]
    accuracies = [1.0 - s / n for s in scores]  # lower score, higher accuracy
    costs = [1.0] * n
    kwargs = {"sizes": [1, 6, 12, 24], "draws": 200}
    a = subsample_curve(scores, accuracies, costs, [0.0] * n, seed=3, **kwargs)  # type: ignore[arg-type]
    b = subsample_curve(scores, accuracies, costs, [0.0] * n, seed=3, **kwargs)  # type: ignore[arg-type]
    c = subsample_curve(scores, accuracies, costs, [0.0] * n, seed=4, **kwargs)  # type: ignore[arg-type]
    assert a == b
    assert a != c
    assert [p.draws for p in a] == [24, 200, 200, 1]  # C(24, 1) = 24 <= 200: every subset once
    assert [p.cost_s for p in a] == [1.0, 6.0, 12.0, 24.0]
    accs = [p.accuracy for p in a]
    assert accs == sorted(accs)  # a bigger search never finds a worse choice on average here
    assert accs[-1] == 1.0
    assert min(accuracies) < accs[0] < accs[1] < 1.0


def test_ties_go_to_the_first_configuration() -> None:
    points = subsample_curve([0.2, 0.2], [0.1, 0.9], [1.0, 1.0], [5.0, 7.0], sizes=[2])
    assert points == [CurvePoint(2, 2.0 + 5.0, 0.1, 1)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": [0.1, 0.2]}, "differ in length"),
        ({"scores": [], "accuracies": [], "costs_s": [], "chosen_cost_s": []}, "no configurations"),
        ({"accuracies": [0.5, math.nan, 0.7]}, "accuracies holds a non-finite"),
        ({"draws": 0}, "draws must be a positive integer"),
        ({"sizes": [0]}, "outside 1..3"),
        ({"sizes": [4]}, "outside 1..3"),
    ],
)
def test_bad_input_is_a_config_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"scores": SCORES, "accuracies": ACCURACIES, "costs_s": COSTS, "chosen_cost_s": RETRAIN}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        subsample_curve(**args)  # type: ignore[arg-type]


def test_incumbent_curve_reads_a_sequential_search_in_order() -> None:
    scores = [None, 0.5, 0.7, 0.2, None]  # trial 0 pruned, 1 the first incumbent, 3 the next, 4 pruned
    costs = [1.0, 2.0, 3.0, 4.0, 0.5]
    assert incumbents(scores) == [1, 3]
    points = incumbent_curve(scores, costs, {1: 0.6, 3: 0.8}, {1: 10.0, 3: 20.0})
    assert points == [
        CurvePoint(2, 3.0 + 10.0, 0.6, 1),
        CurvePoint(3, 6.0 + 10.0, 0.6, 1),
        CurvePoint(4, 10.0 + 20.0, 0.8, 1),
        CurvePoint(5, 10.5 + 20.0, 0.8, 1),
    ]


def test_incumbent_curve_needs_every_incumbents_retrain_and_matching_lengths() -> None:
    with pytest.raises(ConfigError, match="trial 3 was the incumbent"):
        incumbent_curve([0.5, 0.7, None, 0.2], [1.0] * 4, {0: 0.6}, {0: 1.0})
    with pytest.raises(ConfigError, match="2 scores but 3 costs"):
        incumbent_curve([0.5, 0.4], [1.0] * 3, {}, {})
    assert incumbents([None, None]) == []
    assert incumbent_curve([None, None], [1.0, 1.0], {}, {}) == []
