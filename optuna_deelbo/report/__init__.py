"""Reports: results tables and HTML, plotly figures, accuracy at smaller budgets, optuna-dashboard notes.

The figures, tables and dashboard calls a user runs on a storage; the notes' text, graph ids and per-kind
figures behind :func:`trajectory_figure` are the private modules'.
"""

from __future__ import annotations

from optuna_deelbo.report._budget import CurvePoint, incumbent_curve, incumbents, subsample_curve
from optuna_deelbo.report._dashboard import (
    dashboard_available,
    save_storage_to_dashboard,
    save_to_dashboard,
    serve_dashboard,
)
from optuna_deelbo.report._figures import (
    STRATEGY_COLORS,
    accuracy_vs_compute_figure,
    accuracy_vs_time_figure,
    trajectory_figure,
)
from optuna_deelbo.report._tables import (
    load_comparisons,
    results_table,
    write_html_report,
    write_storage_report,
)

__all__ = [
    "STRATEGY_COLORS",
    "CurvePoint",
    "accuracy_vs_compute_figure",
    "accuracy_vs_time_figure",
    "dashboard_available",
    "incumbent_curve",
    "incumbents",
    "load_comparisons",
    "results_table",
    "save_storage_to_dashboard",
    "save_to_dashboard",
    "serve_dashboard",
    "subsample_curve",
    "trajectory_figure",
    "write_html_report",
    "write_storage_report",
]
