"""Reports: results tables and HTML, plotly figures, accuracy at smaller budgets, optuna-dashboard notes."""

from __future__ import annotations

from optuna_deelbo.report._budget import CurvePoint, incumbent_curve, incumbents, subsample_curve
from optuna_deelbo.report._dashboard import (
    ACCURACY_GRAPH_ID,
    TRAJECTORY_GRAPH_ID,
    dashboard_available,
    save_storage_to_dashboard,
    save_to_dashboard,
    serve_dashboard,
    study_note,
)
from optuna_deelbo.report._figures import (
    STRATEGY_COLORS,
    accuracy_vs_compute_figure,
    accuracy_vs_time_figure,
    learned_trajectories_figure,
    trajectory_figure,
    weight_decay_trajectories_figure,
)
from optuna_deelbo.report._tables import (
    comparison_key,
    deelbo_verdict,
    load_comparisons,
    results_table,
    trials_table_html,
    write_html_report,
    write_storage_report,
)

__all__ = [
    "ACCURACY_GRAPH_ID",
    "STRATEGY_COLORS",
    "TRAJECTORY_GRAPH_ID",
    "CurvePoint",
    "accuracy_vs_compute_figure",
    "accuracy_vs_time_figure",
    "comparison_key",
    "dashboard_available",
    "deelbo_verdict",
    "incumbent_curve",
    "incumbents",
    "learned_trajectories_figure",
    "load_comparisons",
    "results_table",
    "save_storage_to_dashboard",
    "save_to_dashboard",
    "serve_dashboard",
    "study_note",
    "subsample_curve",
    "trajectory_figure",
    "trials_table_html",
    "weight_decay_trajectories_figure",
    "write_html_report",
    "write_storage_report",
]
