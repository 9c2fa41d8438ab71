"""Tables and the HTML report, from strategy results or from the studies in a storage alone.

A *comparison* is the set of strategy studies run on one task with one prior; their study
names share the prefix ``<task>/<prior>/`` (see :func:`optuna_deelbo.tuning.study_name_for`)
and each carries the study user attrs that :func:`~optuna_deelbo.tuning.run_strategy` writes, so a report can be
rebuilt from the storage without training anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.report._figures import accuracy_vs_time_figure, trajectory_figure
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._study import StrategyResult

__all__ = [
    "comparison_key",
    "deelbo_verdict",
    "load_comparisons",
    "results_table",
    "trials_table_html",
    "write_html_report",
    "write_storage_report",
]

_COLUMNS = ("strategy", "trials", "total s", "test accuracy", "test NLL", "speed-up vs grid")
#: Accuracy differences (points) below this are called "within noise" by :func:`deelbo_verdict`.
NOISE_POINTS = 1.0


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


def deelbo_verdict(results: Sequence[StrategyResult], noise_points: float = NOISE_POINTS) -> str:
    """One sentence: DE-ELBo's test accuracy and cost against the most accurate other strategy.

    Says "LOSES" in capitals when DE-ELBo is more than ``noise_points`` behind.
    """
    deelbo = next((r for r in results if r.strategy == "deelbo"), None)
    others = [r for r in results if r.strategy != "deelbo" and not math.isnan(r.test_accuracy)]
    if deelbo is None or not others or math.isnan(deelbo.test_accuracy):
        return "no DE-ELBo result to compare"
    best = max(others, key=lambda r: r.test_accuracy)
    gap = 100 * (deelbo.test_accuracy - best.test_accuracy)
    cost = best.total_s / deelbo.total_s if deelbo.total_s > 0 else math.inf
    if abs(gap) < noise_points:
        outcome = f"matches {best.strategy} within noise ({gap:+.1f} points)"
    elif gap > 0:
        outcome = f"beats {best.strategy} by {gap:.1f} points"
    else:
        outcome = f"LOSES to {best.strategy} by {-gap:.1f} points"
    return (
        f"DE-ELBo {100 * deelbo.test_accuracy:.1f}% in {deelbo.total_s:.1f} s {outcome} "
        f"({100 * best.test_accuracy:.1f}% in {best.total_s:.1f} s, {cost:.1f}x DE-ELBo's wall-clock)"
    )


def comparison_key(study_name: str) -> str:
    """``"<task>/<prior>"`` of a strategy study named ``"<task>/<prior>/<strategy>"``."""
    return study_name.rsplit("/", 1)[0] if "/" in study_name else study_name


def load_comparisons(storage: optuna.storages.BaseStorage) -> dict[str, list[StrategyResult]]:
    """Every finished strategy study in ``storage``, grouped by :func:`comparison_key`, in creation order.

    Studies without the ``strategy`` user attr (not made by a strategy) are skipped.
    """
    groups: dict[str, list[StrategyResult]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if A.STRATEGY not in summary.user_attrs or A.TIME_TOTAL_S not in summary.user_attrs:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        groups.setdefault(comparison_key(summary.study_name), []).append(StrategyResult.from_study(study))
    return groups


def _cell(value: Any, fmt: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "" if isinstance(value, float) and math.isnan(value) else format(value, fmt)
    return "" if value is None else html.escape(str(value))


#: (header, how to read a trial's value, format) for :func:`trials_table_html`.
_TRIAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("lr", "param:lr", ".0e"),
    ("weight decay", "param:weight_decay", ".1e"),
    ("value", "value", ".4f"),
    ("val NLL", A.VAL_NLL, ".4f"),
    ("val acc %", A.VAL_ACCURACY, ".1%"),
    ("test acc %", A.TEST_ACCURACY, ".1%"),
    ("learned weight decay", A.LEARNED_WEIGHT_DECAY, ".2e"),
    ("lambda", A.LEARNED_LAMBDA, ".2e"),
    ("tau", A.LEARNED_TAU, ".2e"),
    ("sigma", A.LEARNED_SIGMA, ".2e"),
    ("trial s", A.TIME_TRIAL_S, ".1f"),
)


def _trial_value(trial: FrozenTrial, key: str, learned: Sequence[str]) -> Any:
    if key == "value":
        return trial.value
    if key.startswith("param:"):
        name = key.split(":", 1)[1]
        return None if name in learned else trial.params.get(name)
    return trial.user_attrs.get(key)


def trials_table_html(study: optuna.study.Study) -> str:
    """An HTML table of the study's trials: state, parameters, value, metrics, learned values, seconds.

    Columns no trial has are left out; the chosen trial (study attr ``best_trial``) is bold.
    A weight decay under DEELBoSampler is learned, so its placeholder parameter is not shown.
    """
    trials = study.get_trials(deepcopy=False)
    learned = ("weight_decay",) if any(t.user_attrs.get(A.MODE) == "deelbo" for t in trials) else ()
    columns = [c for c in _TRIAL_COLUMNS if any(_trial_value(t, c[1], learned) is not None for t in trials)]
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in ("trial", "state", *(c[0] for c in columns)))
    rows = []
    best = study.user_attrs.get(A.BEST_TRIAL)
    for t in trials:
        cells = [str(t.number), t.state.name.lower()]
        cells += [_cell(_trial_value(t, key, learned), fmt) for _, key, fmt in columns]
        style = " style='font-weight:bold'" if t.number == best else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table border='1' cellpadding='3'><tr>{head}</tr>{''.join(rows)}</table>"


def _results_html(results: Sequence[StrategyResult]) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in line.strip("|").split("|")) + "</tr>"
        for line in results_table(results).splitlines()[2:]
    )
    header = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    return f"<table border='1' cellpadding='4'><tr>{header}</tr>{rows}</table>"


def _comparison_parts(results: Sequence[StrategyResult], storage: optuna.storages.BaseStorage) -> list[str | go.Figure]:
    parts: list[str | go.Figure] = [
        _results_html(results),
        f"<p>{html.escape(deelbo_verdict(results))}. Total = tuning + retraining the winner on all N; "
        "DE-ELBo trains on all N and needs no retraining.</p>",
        accuracy_vs_time_figure(results),
    ]
    for r in results:
        study = optuna.load_study(study_name=r.study_name, storage=storage)
        description = study.user_attrs.get(A.DESCRIPTION, "")
        parts.append(f"<h3>{html.escape(r.strategy)}: {html.escape(str(description))}</h3>")
        parts.append(
            f"<p>study <code>{html.escape(r.study_name)}</code>; chosen: {html.escape(str(r.best_params))}; "
            f"{r.n_trials} trials, tuning {r.tuning_s:.1f} s + retrain {r.retrain_s:.1f} s</p>"
        )
        parts.append(trials_table_html(study))
        figure = trajectory_figure(study)
        if figure is not None:
            parts.append(figure)
    return parts


def _write(path: str | Path, title: str, parts: Sequence[str | go.Figure], plotlyjs: bool | str) -> Path:
    body = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"]
    body.append(f"<h1>{html.escape(title)}</h1>")
    first_figure = True
    for part in parts:
        if isinstance(part, go.Figure):
            body.append(part.to_html(full_html=False, include_plotlyjs=plotlyjs if first_figure else False))
            first_figure = False
        else:
            body.append(part)
    body.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(body), encoding="utf-8")
    return out


def write_html_report(
    path: str | Path,
    results: Sequence[StrategyResult],
    storage: optuna.storages.BaseStorage,
    title: str,
    *,
    plotlyjs: bool | str = True,
) -> Path:
    """One self-contained HTML file (plotly.js embedded) for one comparison.

    It holds the results table, a verdict line, accuracy vs total wall-clock, and per strategy
    its trials table and trajectory figure (learned lambda / tau / sigma for DE-ELBo, the
    weight-decay schedule for pulldown / pullup / adaptive). ``plotlyjs="cdn"`` links plotly.js
    instead of embedding its 4.6 MB (the file then needs internet to draw).
    """
    return _write(path, title, _comparison_parts(results, storage), plotlyjs)


def write_storage_report(
    path: str | Path, storage: optuna.storages.BaseStorage, title: str | None = None, *, plotlyjs: bool | str = True
) -> Path:
    """The HTML report of every comparison in ``storage``, from the studies alone (see :func:`write_html_report`).

    Raises:
        ConfigError: the storage holds no finished strategy study.
    """
    groups = load_comparisons(storage)
    if not groups:
        raise ConfigError("the storage holds no finished optuna-deelbo strategy study")
    parts: list[str | go.Figure] = []
    for key, results in groups.items():
        parts.append(f"<h2>{html.escape(key)}</h2>")
        parts += _comparison_parts(results, storage)
    return _write(path, title or f"optuna-deelbo report: {len(groups)} comparison(s)", parts, plotlyjs)
