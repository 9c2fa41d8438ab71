"""The search's cost in runs and wall-clock against what users run instead (issue 33), on the paper's CPU cells.

Usage: python benchmarks/search_cost.py [--tasks digits,wordnet,split-cifar] [--data-dir ../shared/data] [--threads 1]

For every cell (task, N, training set) of the paper benchmark's CPU settings (benchmarks/paper.py's
DEFAULTS: the same N, seeds, steps and batch sizes) four strategies run as their own studies, one
after another on the same machine state: the 4-rate DE-ELBo search (``deelbo``, one by one), right
after it ``tpe-budget`` (TPE given that search's measured total wall-clock, the equal-budget duel),
``deelbo-descend`` (largest rate first, stopping once the selection score gets worse), ``default``
(one MAP run on all N at lr 0.01 and the common weight decay, no search), ``lr-free`` (the same
run with the learning-rate-free Prodigy) and ``deelbo-lr-free`` (one DE-ELBo run with Prodigy for the
weights and sigma's own Adam, issue 33's route b). Each DE-ELBo trial's test
accuracy is recorded (it trains on all N, so a trial's model is a final model), so the table also
shows the best rate in hindsight (the oracle) and each search's regret against it. Writes
benchmarks/results/search-cost-cpu.md and search-cost-cpu.csv after every cell, and at the end the
cost-vs-accuracy figure search-cost-cpu.html / .png (a row per task, a panel per N, means over the
training sets); storages go to benchmarks/results/search-cost-cpu.db (git-ignored; a rerun reuses finished
studies, and the record then says when their trials ran).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import torch
from optuna.trial import TrialState
from plotly.subplots import make_subplots

import optuna_deelbo as od
from optuna_deelbo.report import STRATEGY_COLORS
from optuna_deelbo.tuning import study_name_for
from optuna_deelbo.tuning.strategies import Strategy, TPEBudgetStrategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, write_csv
from paper import DEFAULTS, write_figure

#: The strategies of every cell, in the order they run (tpe-budget right after the search whose time it gets).
STRATEGIES = ("deelbo", "tpe-budget", "deelbo-descend", "default", "lr-free", "deelbo-lr-free")
#: Their keys in the rows and the CSV.
KEYS = ("deelbo", "budget", "descend", "default", "lrfree", "deelbo_lrfree")
TASKS = ("digits", "wordnet", "split-cifar")
STEM = "search-cost-cpu"


def _task(name: str, n: int, seed: int, data_dir: str) -> od.TaskSpec:
    settings = DEFAULTS[(name, "cpu")]
    common = {"seed": seed, "prior": "l2-sp", "steps": settings["steps"], "batch_size": settings["batch_size"]}
    if name == "digits":
        return od.digits_task(n, pretrain_steps=settings["pretrain"], device="cpu", **common)[0]
    if name == "wordnet":
        return od.wordnet_task(n, max_length=16, trainable_layers=2, device="cpu", **common)[0]  # as paper.py
    return od.split_cifar_task(n, data_dir=data_dir, pretrain_steps=settings["pretrain"], device="cpu", **common)[0]


def _strategy(name: str, budget_s: float | None) -> Strategy:
    strategy = od.tuning.get_strategy(name, batched="off")
    if isinstance(strategy, TPEBudgetStrategy):
        assert budget_s is not None
        return strategy.with_budget(budget_s)
    return strategy


#: Study user attr of a cell's ``deelbo`` study: ``{"task", "N", "seed", "prefix"}`` (prefix: ``<task name>/<prior>``).
CELL_ATTR = "search_cost:cell"


def _run(storage: optuna.storages.BaseStorage, task: od.TaskSpec, name: str, budget_s: float | None) -> float:
    """Run (or reuse) one strategy's study; returns its total wall-clock (s, as compare reports it)."""
    result = od.tuning.run_strategy(
        _strategy(name, budget_s), task, storage, study_name_for(task, name), if_exists="resume"
    )
    return result.total_s


def run_cell(storage: optuna.storages.BaseStorage, name: str, n: int, seed: int, data_dir: str) -> None:
    """Every strategy on one cell (tpe-budget right after deelbo, with its wall-clock); the cell marked for tables."""
    task = _task(name, n, seed, data_dir)
    deelbo_s = _run(storage, task, "deelbo", None)
    for strategy in STRATEGIES[1:]:
        _run(storage, task, strategy, deelbo_s if strategy == "tpe-budget" else None)
    study = optuna.load_study(study_name=study_name_for(task, "deelbo"), storage=storage)
    study.set_user_attr(CELL_ATTR, {"task": name, "N": n, "seed": seed, "prefix": f"{task.name}/{task.prior}"})


def cell_rows(storage: optuna.storages.BaseStorage) -> tuple[list[dict[str, Any]], list[tuple[Any, Any]]]:
    """One row per finished cell in ``storage`` (read from the studies alone), and the studies' time spans.

    A cell some strategy has not run yet (one added to :data:`STRATEGIES` later) or is still running (another
    process on the same storage) is left out.
    """
    rows: list[dict[str, Any]] = []
    spans: list[tuple[Any, Any]] = []
    summaries = optuna.get_all_study_summaries(storage)
    names = {summary.study_name for summary in summaries}
    for summary in summaries:
        cell = summary.user_attrs.get(CELL_ATTR)
        if cell is None or any(f"{cell['prefix']}/{strategy}" not in names for strategy in STRATEGIES):
            continue
        row: dict[str, Any] = {"task": cell["task"], "N": cell["N"], "seed": cell["seed"]}
        studies = {s: optuna.load_study(study_name=f"{cell['prefix']}/{s}", storage=storage) for s in STRATEGIES}
        if any(od.tuning.attrs.TIME_TOTAL_S not in study.user_attrs for study in studies.values()):
            continue
        for strategy, key in zip(STRATEGIES, KEYS, strict=True):
            study = studies[strategy]
            result = od.tuning.StrategyResult.from_study(study)
            row |= {f"{key}_lr": result.best_params["lr"], f"{key}_acc": 100.0 * result.test_accuracy}
            row |= {f"{key}_runs": result.n_trials, f"{key}_s": result.total_s}
            stamps = [d for t in study.trials for d in (t.datetime_start, t.datetime_complete) if d is not None]
            spans.append((min(stamps), max(stamps)))
            if strategy == "deelbo":
                trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
                per_lr = {t.params["lr"]: 100.0 * float(t.user_attrs.get("test:accuracy", "nan")) for t in trained}
                scores = {t.params["lr"]: float(t.value) for t in trained if t.value is not None}
        oracle = max(per_lr.items(), key=lambda item: item[1])
        row |= {"oracle_lr": oracle[0], "oracle_acc": oracle[1]}
        row["per_lr_acc"] = {lr: round(a, 2) for lr, a in sorted(per_lr.items(), reverse=True)}
        row["per_lr_score"] = {lr: round(v, 4) for lr, v in sorted(scores.items(), reverse=True)}
        rows.append(row)
    rows.sort(key=lambda r: (TASKS.index(r["task"]), r["N"], r["seed"]))
    return rows, spans


def _write(
    rows: list[dict[str, Any]], spans: list[tuple[Any, Any]], record: RunRecord, wall_s: float, note: str
) -> None:
    planned = sum(len(DEFAULTS[(t, "cpu")]["n"]) * len(DEFAULTS[(t, "cpu")]["seeds"]) for t in TASKS)
    write_csv(RESULTS / f"{STEM}.csv", rows)
    (RESULTS / f"{STEM}.md").write_text(_markdown(rows, record, wall_s, planned, spans, note))


def parse_cell_args(description: str, stem: str) -> tuple[argparse.Namespace, list[str]]:
    """The options of a benchmark over the paper's CPU cells (this one and halving.py); returns them and the tasks.

    Also sets the torch threads and Optuna's log level; ``--storage`` defaults to ``benchmarks/results/<stem>.db``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list from {','.join(TASKS)}")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--storage", default=f"sqlite:///{RESULTS / (stem + '.db')}")
    parser.add_argument(
        "--tables-only", action="store_true", help="train nothing: rebuild the tables and figure from the storage"
    )
    parser.add_argument("--note", default="", help="a line for the record, e.g. how the studies were run")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {','.join(TASKS)}")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return args, [] if args.tables_only else tasks


def cells(tasks: list[str]) -> Iterator[tuple[str, int, int]]:
    """``(task, N, seed)`` of every cell of ``tasks`` in the paper's CPU settings, in run order."""
    for name in tasks:
        settings = DEFAULTS[(name, "cpu")]
        for n in settings["n"]:
            for seed in settings["seeds"]:
                yield name, n, seed


def main() -> None:
    args, tasks = parse_cell_args(__doc__.split("\n", 1)[0], STEM)
    record = RunRecord.start()
    storage = od.open_storage(args.storage)
    started = time.perf_counter()
    for name, n, seed in cells(tasks):
        run_cell(storage, name, n, seed, args.data_dir)
        rows, spans = cell_rows(storage)
        row = next(r for r in rows if (r["task"], r["N"], r["seed"]) == (name, n, seed))
        print(
            f"{name} N={n} seed={seed}: "
            + "; ".join(
                f"{k} lr={row[k + '_lr']:.3g} {row[k + '_acc']:.1f}% ({row[k + '_runs']} runs, {row[k + '_s']:.0f} s)"
                for k in KEYS
            )
            + f"; oracle lr={row['oracle_lr']:g} {row['oracle_acc']:.1f}%",
            flush=True,
        )
        # after every cell: a long run stopped early leaves the cells it finished on record
        _write(rows, spans, record, time.perf_counter() - started, args.note)
    rows, spans = cell_rows(storage)
    if not rows:
        sys.exit(f"no finished cell in {args.storage}")
    _write(rows, spans, record, time.perf_counter() - started, args.note)
    png_error = write_figure(figure(rows), RESULTS / STEM)
    if png_error:
        print(f"PNG not written ({png_error}); install kaleido and Debian's chromium", file=sys.stderr)
    print(f"wrote {RESULTS / (STEM + '.md')}")


#: Figure labels of the strategies (row keys of the table).
LABELS = dict(zip(KEYS, STRATEGIES, strict=True))


def figure(
    rows: list[dict[str, Any]], labels: dict[str, str] | None = None, colors: dict[str, str] | None = None
) -> go.Figure:
    """Test accuracy (%) against wall-clock (s, log axis) per strategy: a row per task, a panel per N (seed means).

    ``labels``: row key -> strategy name shown (default :data:`LABELS`); each row has ``<key>_s`` and ``<key>_acc``.
    ``colors``: label -> colour for labels that are not strategy names (else ``STRATEGY_COLORS``).
    """
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    ns = {t: sorted({r["N"] for r in rows if r["task"] == t}) for t in tasks}
    cols = max(len(v) for v in ns.values())
    titles = [f"{t} N={ns[t][c]}" if c < len(ns[t]) else "" for t in tasks for c in range(cols)]
    figure = make_subplots(rows=len(tasks), cols=cols, subplot_titles=titles, vertical_spacing=0.14)
    for row, task in enumerate(tasks, 1):
        for col, n in enumerate(ns[task], 1):
            group = [r for r in rows if r["task"] == task and r["N"] == n]
            for key, label in (labels or LABELS).items():
                x = statistics.fmean(float(r[f"{key}_s"]) for r in group)
                y = statistics.fmean(float(r[f"{key}_acc"]) for r in group)
                figure.add_trace(
                    go.Scatter(
                        x=[x],
                        y=[y],
                        mode="markers",
                        name=label,
                        legendgroup=label,
                        showlegend=row == 1 and col == 1,
                        marker={"size": 11, "color": (colors or {}).get(label, STRATEGY_COLORS.get(label))},
                        hovertemplate=f"{label}<br>%{{x:.1f}} s<br>%{{y:.1f}}%<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
            figure.update_xaxes(type="log", title_text="wall-clock s", row=row, col=col)
        figure.update_yaxes(title_text="test accuracy %", row=row, col=1)
    figure.update_layout(
        title="Search cost against accuracy (CPU, mean over 3 training sets per panel)",
        width=330 * cols + 200,
        height=300 * len(tasks) + 80,
        template="plotly_white",
    )
    return figure


def _markdown(
    rows: list[dict[str, Any]],
    record: RunRecord,
    wall_s: float,
    planned: int,
    spans: list[tuple[Any, Any]],
    note: str = "",
) -> str:
    lines = ["# The search's cost against what users run instead (issue 33)", "", record.header("cpu"), ""]
    lines += [f"- note: {note}"] if note else []
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    lines += [
        f"- the studies' trials ran {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} (local time of the storage;"
        " a rerun reuses finished studies; `--tables-only` rebuilds these tables from them)",
        f"- settings: benchmarks/paper.py's CPU DEFAULTS per task (L2-SP, one torch thread); this run "
        f"{wall_s / 60:.1f} min",
        f"- cells (task, N, training set) on record: {len(rows)} of {planned}"
        + ("" if len(rows) == planned else " (the run stopped before the others)"),
        "- s: each strategy's total wall-clock as `compare` reports it (search + retraining; a DE-ELBo search",
        "  leaves out the reporting-only test evaluations of the trials it did not choose); runs: trials that",
        "  trained (skipped ones excluded; tpe-budget's count MAP trials on 80 % plus, not counted, the retrain)",
        "- tpe-budget ran right after deelbo with its measured s as the budget (no trial starts after it)",
        "- oracle: the rate with the best test accuracy among the 4 DE-ELBo runs (hindsight); regret = oracle - search",
        "",
        "Mean over the training sets (test accuracy %, s, runs):",
        "",
        "| task | N | deelbo | descend | tpe-budget | default | lr-free | deelbo-lr-free | deelbo - tpe-budget | "
        "deelbo-lr-free - tpe-budget | s deelbo | s descend | s tpe-budget | s default | s lr-free | "
        "s deelbo-lr-free | runs descend | trials tpe-budget | regret deelbo | regret descend |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(r["task"], r["N"]) for r in rows}, key=lambda c: (TASKS.index(c[0]), c[1]))
    for task, n in cells:
        group = [r for r in rows if r["task"] == task and r["N"] == n]

        def mean(key: str, items: list[dict[str, Any]] = group) -> float:
            return statistics.fmean(float(r[key]) for r in items)

        lines.append(
            f"| {task} | {n} | {mean('deelbo_acc'):.1f} | {mean('descend_acc'):.1f} | {mean('budget_acc'):.1f} | "
            f"{mean('default_acc'):.1f} | {mean('lrfree_acc'):.1f} | {mean('deelbo_lrfree_acc'):.1f} | "
            f"{mean('deelbo_acc') - mean('budget_acc'):+.1f} | {mean('deelbo_lrfree_acc') - mean('budget_acc'):+.1f} | "
            f"{mean('deelbo_s'):.1f} | {mean('descend_s'):.1f} | {mean('budget_s'):.1f} | {mean('default_s'):.1f} | "
            f"{mean('lrfree_s'):.1f} | {mean('deelbo_lrfree_s'):.1f} | "
            f"{mean('descend_runs'):.1f} | {mean('budget_runs'):.1f} | "
            f"{mean('oracle_acc') - mean('deelbo_acc'):.1f} | {mean('oracle_acc') - mean('descend_acc'):.1f} |"
        )
    lines += ["", f"![cost against accuracy]({STEM}.png) ([interactive]({STEM}.html))"]
    lines += ["", "Per training set: the rate each DE-ELBo search chose, test accuracy % and score per rate.", ""]
    lines += [
        "| task | N | seed | deelbo lr | descend lr (runs) | tpe-budget acc (trials) | default acc | lr-free acc | "
        "deelbo-lr-free acc | oracle lr | accuracy by lr | score by lr |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['N']} | {r['seed']} | {r['deelbo_lr']:g} | {r['descend_lr']:g} "
            f"({r['descend_runs']}) | {r['budget_acc']:.1f} ({r['budget_runs']}) | {r['default_acc']:.1f} | "
            f"{r['lrfree_acc']:.1f} | {r['deelbo_lrfree_acc']:.1f} | "
            f"{r['oracle_lr']:g} | {r['per_lr_acc']} | {r['per_lr_score']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
