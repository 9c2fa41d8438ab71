"""Tables and plotly figures from strategy results and the studies in a storage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from optuna_deelbo.strategies import StrategyResult

__all__ = ["accuracy_vs_time_figure", "lambda_trace_figure", "results_table", "write_html_report"]

_COLUMNS = ("strategy", "trials", "total s", "test accuracy", "test NLL", "speed-up vs grid")


def _speedup(result: StrategyResult, baseline: StrategyResult | None) -> str:
    if baseline is None or result.total_s <= 0:
        return "n/a"
    return f"{baseline.total_s / result.total_s:.1f}x"


def results_table(results: Sequence[StrategyResult], baseline: str = "grid") -> str:
    """A markdown table: strategy, trials, total seconds, test accuracy, test NLL, speed-up."""
    base = next((r for r in results if r.strategy == baseline), None)
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for r in results:
        acc = "n/a" if math.isnan(r.test_accuracy) else f"{100 * r.test_accuracy:.1f}%"
        nll = "n/a" if math.isnan(r.test_nll) else f"{r.test_nll:.3f}"
        lines.append(f"| {r.strategy} | {r.n_trials} | {r.total_s:.1f} | {acc} | {nll} | {_speedup(r, base)} |")
    return "\n".join(lines)


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
                marker={"size": 14},
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


def lambda_trace_figure(study: optuna.study.Study) -> go.Figure:
    """Learned prior variance lambda (and tau, dashed) over training, one line per DE-ELBo trial."""
    fig = go.Figure()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        trace = trial.user_attrs.get("learned:trace")
        if not trace:
            continue
        steps = [row[0] for row in trace]
        label = f"trial {trial.number} lr={trial.params.get('lr', float('nan')):.0e}"
        fig.add_trace(go.Scatter(x=steps, y=[row[1] for row in trace], mode="lines", name=f"lambda, {label}"))
        if not all(math.isnan(row[2]) for row in trace):
            fig.add_trace(
                go.Scatter(
                    x=steps, y=[row[2] for row in trace], mode="lines", line={"dash": "dash"}, name=f"tau, {label}"
                )
            )
    fig.update_layout(
        title=f"Learned prior variances during training ({study.study_name})",
        xaxis={"title": "step"},
        yaxis={"title": "variance (weight units^2)", "type": "log"},
    )
    return fig


def write_html_report(
    path: str | Path,
    results: Sequence[StrategyResult],
    storage: optuna.storages.BaseStorage,
    title: str,
) -> Path:
    """One self-contained HTML file: the results table and the figures (plotly.js embedded)."""
    figures = [accuracy_vs_time_figure(results)]
    for r in results:
        study = optuna.load_study(study_name=r.study_name, storage=storage)
        if any("learned:trace" in t.user_attrs for t in study.get_trials(deepcopy=False)):
            figures.append(lambda_trace_figure(study))
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell.strip()}</td>" for cell in line.strip("|").split("|")) + "</tr>"
        for line in results_table(results).splitlines()[2:]
    )
    header = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    parts = [
        f"<html><head><meta charset='utf-8'><title>{title}</title></head><body>",
        f"<h1>{title}</h1><table border='1' cellpadding='4'><tr>{header}</tr>{rows}</table>",
    ]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
