"""report/_figures.py: the figures are built from a real compare run's studies and show what they say."""

from __future__ import annotations

import optuna

from optuna_deelbo.report import accuracy_vs_time_figure, trajectory_figure
from optuna_deelbo.tuning import StrategyResult
from optuna_deelbo.tuning import attrs as A


def test_deelbo_trajectories_plot_every_trial_and_mark_the_chosen_one(tiny_compare_url: str) -> None:
    study = optuna.load_study(study_name="digits-N50-seed0/l2-sp/deelbo", storage=tiny_compare_url)
    figure = trajectory_figure(study)
    assert figure is not None
    traced = [t for t in study.trials if A.series(t, A.LEARNED_TRACE)]
    assert len(traced) == 4
    names = " ".join(str(trace.name) for trace in figure.data)
    assert "lr" in names
    steps = {float(x) for trace in figure.data for x in trace.x}
    assert steps <= {float(row[0]) for t in traced for row in A.series(t, A.LEARNED_TRACE) or ()}


def test_a_study_without_trajectories_has_no_trajectory_figure(tiny_compare_url: str) -> None:
    study = optuna.load_study(study_name="digits-N50-seed0/l2-sp/tpe", storage=tiny_compare_url)
    assert trajectory_figure(study) is None


def test_accuracy_vs_time_puts_each_strategy_at_its_cost(tiny_compare_url: str) -> None:
    results = [
        StrategyResult.from_study(optuna.load_study(study_name=name, storage=tiny_compare_url))
        for name in ("digits-N50-seed0/l2-sp/deelbo", "digits-N50-seed0/l2-sp/tpe")
    ]
    figure = accuracy_vs_time_figure(results)
    points = {(float(x), float(y)) for trace in figure.data for x, y in zip(trace.x, trace.y, strict=True)}
    for r in results:
        assert any(abs(x - r.total_s) < 1e-6 and abs(y - 100 * r.test_accuracy) < 1e-6 for x, y in points) or any(
            abs(x - r.total_s) < 1e-6 and abs(y - r.test_accuracy) < 1e-6 for x, y in points
        ), (r.strategy, points)
