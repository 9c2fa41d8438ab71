"""Plotly figures: accuracy vs wall-clock, learned and scheduled trajectories, accuracy vs compute.

Each takes numbers already stored (strategy results, study user attrs, budget curves) and
trains nothing; the HTML report, the dashboard and the benchmarks draw the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from optuna_deelbo.report._budget import CurvePoint
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._study import StrategyResult

__all__ = [
    "STRATEGY_COLORS",
    "accuracy_vs_compute_figure",
    "accuracy_vs_time_figure",
    "learned_trajectories_figure",
    "trajectory_figure",
    "weight_decay_trajectories_figure",
]

#: One colour per strategy name, shared by every figure (others fall back to plotly's cycle).
STRATEGY_COLORS: dict[str, str] = {
    "deelbo": "#d62728",
    "deelbo-descend": "#ff9896",
    "deelbo-halving": "#8b0000",
    "deelbo-lr-free": "#ff7f0e",
    "grid": "#1f77b4",
    "tpe": "#2ca02c",
    "tpe-budget": "#98df8a",
    "tpe-reg": "#17becf",
    "default": "#7f7f7f",
    "lr-free": "#bcbd22",
    "pulldown": "#9467bd",
    "pullup": "#8c564b",
    "adaptive": "#e377c2",
}
_TRIAL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def accuracy_vs_time_figure(results: Sequence[StrategyResult]) -> go.Figure:
    """Test accuracy (%) against total wall-clock (s, log axis), one marker per strategy."""
    fig = go.Figure()
    for r in results:
        fig.add_trace(
            go.Scatter(
                x=[r.total_s],
                y=[100 * r.test_accuracy],
                mode="markers+text",
                text=[r.strategy],
                textposition="top center",
                marker={"size": 14, "color": STRATEGY_COLORS.get(r.strategy)},
                name=r.strategy,
                hovertemplate=f"{r.strategy}<br>%{{x:.1f}} s<br>%{{y:.1f}}%<br>{r.n_trials} trials<extra></extra>",
            )
        )
    fig.update_layout(
        title="Test accuracy vs total tuning cost (tuning + retrain)",
        xaxis={"title": "total wall-clock (s)", "type": "log"},
        yaxis={"title": "test accuracy (%)"},
        showlegend=False,
    )
    return fig


def _trial_label(trial: FrozenTrial) -> str:
    lr = trial.params.get("lr")
    return f"trial {trial.number}" + (f", lr={lr:.0e}" if isinstance(lr, float) else "")


def _complete(study: optuna.study.Study) -> list[FrozenTrial]:
    return list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _with_series(trials: Sequence[FrozenTrial], key: str) -> list[tuple[FrozenTrial, list[Any]]]:
    """``(trial, series)`` for each trial holding the :data:`~optuna_deelbo.tuning.attrs.SERIES` attr ``key``."""
    pairs = [(t, A.series(t, key)) for t in trials]
    return [(t, rows) for t, rows in pairs if rows]


def learned_trajectories_figure(study: optuna.study.Study) -> go.Figure:
    """DE-ELBo's ``learned:trace``: lambda, tau (variances) and sigma (std) against step, one colour per trial."""
    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.08,
        subplot_titles=("lambda (body prior)", "tau (head prior)", "sigma (posterior std)"),
    )
    for k, (trial, trace) in enumerate(_with_series(_complete(study), A.LEARNED_TRACE)):
        steps = [row[0] for row in trace]
        color = _TRIAL_COLORS[k % len(_TRIAL_COLORS)]
        chosen = trial.number == study.user_attrs.get(A.BEST_TRIAL)
        for col in (1, 2, 3):
            values = [r[col] for r in trace]
            if all(isinstance(v, float) and math.isnan(v) for v in values):
                continue
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    mode="lines",
                    line={"color": color, "width": 3 if chosen else 1.5},
                    name=_trial_label(trial) + (" (chosen)" if chosen else ""),
                    legendgroup=str(trial.number),
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="weight units^2 (log)", row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(
        title=f"Learned prior variances and posterior std during training<br><sup>{study.study_name}</sup>",
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def weight_decay_trajectories_figure(study: optuna.study.Study) -> go.Figure:
    """A schedule strategy's ``lambda:trajectory``: weight decay (log axis) against step, one line per trial."""
    task = study.user_attrs.get(A.TASK) or {}
    fig = go.Figure()
    for k, (trial, rows) in enumerate(_with_series(_complete(study), A.LAMBDA_TRAJECTORY)):
        last = max(int(task.get("steps", 0)), int(rows[-1][0]))
        chosen = trial.number == study.user_attrs.get(A.BEST_TRIAL)
        fig.add_trace(
            go.Scatter(
                x=[r[0] for r in rows] + [last],
                y=[r[1] for r in rows] + [rows[-1][1]],
                mode="lines",
                line={"shape": "hv", "color": _TRIAL_COLORS[k % len(_TRIAL_COLORS)], "width": 3 if chosen else 1.5},
                name=_trial_label(trial) + (" (chosen)" if chosen else ""),
            )
        )
    fig.update_layout(
        title=f"Weight decay during training<br><sup>{study.study_name}</sup>",
        xaxis={"title": "step"},
        yaxis={"title": "weight decay", "type": "log"},
    )
    return fig


def trajectory_figure(study: optuna.study.Study) -> go.Figure | None:
    """The study's trajectory figure: learned (DE-ELBo), scheduled weight decay, or ``None`` (fixed)."""
    trials = _complete(study)
    if any(A.series(t, A.LEARNED_TRACE) for t in trials):
        return learned_trajectories_figure(study)
    if any(A.series(t, A.LAMBDA_TRAJECTORY) for t in trials):
        return weight_decay_trajectories_figure(study)
    return None


def accuracy_vs_compute_figure(
    curves: Mapping[str, Mapping[str, Sequence[CurvePoint]]],
    points: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    *,
    title: str = "Test accuracy vs compute",
) -> go.Figure:
    """One panel per key of ``curves`` (e.g. ``"N = 50"``): a line per strategy, plus single points.

    Args:
        curves: panel -> strategy -> curve points (cost in s, accuracy as a fraction).
        points: panel -> label -> ``(cost_s, accuracy)`` drawn as a lone marker (e.g. a final result).
    """
    panels = list(curves)
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=panels, horizontal_spacing=0.06)
    seen: set[str] = set()
    for col, panel in enumerate(panels, start=1):
        for name, curve in curves[panel].items():
            fig.add_trace(
                go.Scatter(
                    x=[p.cost_s for p in curve],
                    y=[100 * p.accuracy for p in curve],
                    mode="lines+markers",
                    marker={"size": 5},
                    line={"color": STRATEGY_COLORS.get(name.split(" ")[0])},
                    name=name,
                    legendgroup=name,
                    showlegend=name not in seen,
                    customdata=[[p.size, p.draws] for p in curve],
                    hovertemplate=f"{name}<br>%{{customdata[0]}} configs (%{{customdata[1]}} draws)"
                    "<br>%{x:.1f} s<br>%{y:.2f}%<extra></extra>",
                ),
                row=1,
                col=col,
            )
            seen.add(name)
        for label, (cost, acc) in (points or {}).get(panel, {}).items():
            fig.add_trace(
                go.Scatter(
                    x=[cost],
                    y=[100 * acc],
                    mode="markers",
                    marker={"size": 13, "symbol": "star", "color": STRATEGY_COLORS.get(label.split(" ")[0])},
                    name=label,
                    legendgroup=label,
                    showlegend=label not in seen,
                    hovertemplate=f"{label}<br>%{{x:.1f}} s<br>%{{y:.2f}}%<extra></extra>",
                ),
                row=1,
                col=col,
            )
            seen.add(label)
        fig.update_xaxes(title_text="wall-clock (s, log)", type="log", row=1, col=col)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    fig.update_layout(title=title, height=480, width=max(760, 440 * len(panels) + 240))
    return fig
