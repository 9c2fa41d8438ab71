"""Successive halving over the DE-ELBo learning rates (issue 33, route a), on the paper's CPU cells.

Usage: python benchmarks/halving.py [--tasks digits,wordnet,split-cifar] [--data-dir ../shared/data] [--threads 1]

For every cell (task, N, training set) of benchmarks/search_cost.py (the paper benchmark's CPU
settings), two studies run one after the other: ``deelbo-halving`` (the 4 rates batched, the worse half
stopped at 1/4 and 1/2 of the steps by training loss) and the same batched 4-rate search without cuts
(``deelbo`` with ``batched="on"``, study ``<prefix>/deelbo-batched``): the same members, minibatches and
noise, so its final scores are the ranking the rungs try to foresee. The sequential 4-rate search,
``tpe-budget`` and ``default`` come from benchmarks/results/search-cost-cpu.csv (same cells, same
settings; the sequential code has not changed since, so its choices stand).

Writes benchmarks/results/halving-cpu.md / .csv after every cell and the figure halving-cpu.html / .png
(search-cost-cpu's strategies plus the two batched searches); storages in halving-cpu.db (git-ignored,
finished studies are reused).
"""

from __future__ import annotations

import ast
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import optuna_deelbo as od
from optuna_deelbo.train import halving_cost, halving_rungs
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning import study_name_for
from optuna_deelbo.tuning.strategies import DEELBoStrategy, HalvingDEELBoStrategy, Strategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, write_csv
from paper import DEFAULTS, write_figure
from search_cost import KEYS as SEARCH_COST_KEYS
from search_cost import LABELS as SEARCH_COST_LABELS
from search_cost import TASKS, _task, cells, figure, parse_cell_args

STEM = "halving-cpu"
REFERENCE = RESULTS / "search-cost-cpu.csv"
CELL_ATTR = "halving:cell"


def _run(storage: optuna.storages.BaseStorage, task: od.TaskSpec, strategy: Strategy, study_name: str) -> None:
    od.tuning.run_strategy(strategy, task, storage, study_name, if_exists="resume")


def run_cell(storage: optuna.storages.BaseStorage, name: str, n: int, seed: int, data_dir: str) -> None:
    task = _task(name, n, seed, data_dir)
    prefix = study_name_for(task, "deelbo").rsplit("/", 1)[0]
    _run(storage, task, HalvingDEELBoStrategy(), f"{prefix}/deelbo-halving")
    _run(storage, task, DEELBoStrategy(batched="on"), f"{prefix}/deelbo-batched")
    study = optuna.load_study(study_name=f"{prefix}/deelbo-halving", storage=storage)
    config = task.deelbo_train_config(0.1)
    cell = {"task": name, "N": n, "seed": seed, "prefix": prefix, "steps": config.steps, "log_every": config.log_every}
    study.set_user_attr(CELL_ATTR, cell)


def _reference() -> dict[tuple[str, int, int], dict[str, Any]]:
    """search-cost-cpu.csv's rows by (task, N, seed)."""
    if not REFERENCE.exists():
        return {}
    with REFERENCE.open() as fh:
        return {(r["task"], int(r["N"]), int(r["seed"])): r for r in csv.DictReader(fh)}


def _lr_key(value: float) -> str:
    return f"{value:g}"


def cell_rows(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per finished cell: both batched searches, the rung losses and the reference strategies."""
    reference = _reference()
    rows: list[dict[str, Any]] = []
    for summary in optuna.get_all_study_summaries(storage):
        cell = summary.user_attrs.get(CELL_ATTR)
        if cell is None:
            continue
        row: dict[str, Any] = {"task": cell["task"], "N": cell["N"], "seed": cell["seed"]}
        for key in ("halving", "batched"):
            study = optuna.load_study(study_name=f"{cell['prefix']}/deelbo-{key}", storage=storage)
            result = od.tuning.StrategyResult.from_study(study)
            row |= {f"{key}_lr": result.best_params["lr"], f"{key}_acc": 100.0 * result.test_accuracy}
            row[f"{key}_s"] = result.total_s
            if key == "halving":
                rungs: dict[str, list[list[float]]] = {}
                for t in study.trials:
                    rungs[_lr_key(t.params["lr"])] = t.user_attrs.get(A.HALVING_RUNGS, [])
                row["rung_losses"] = {lr: [round(v, 4) for _, v in r] for lr, r in rungs.items()}
                row["rung_steps"] = sorted({int(s) for r in rungs.values() for s, _ in r})
            else:
                done = [t for t in study.trials if t.state == TrialState.COMPLETE]
                row["batched_score"] = {_lr_key(t.params["lr"]): round(float(t.value), 4) for t in done}
                row["batched_acc_by_lr"] = {
                    _lr_key(t.params["lr"]): round(100.0 * float(t.user_attrs.get(A.TEST_ACCURACY, "nan")), 2)
                    for t in done
                }
        steps = int(cell["steps"])
        row["halving_runs"] = halving_cost(4, halving_rungs(4, steps, log_every=int(cell["log_every"])), steps)
        ref = reference.get((cell["task"], int(cell["N"]), int(cell["seed"])))
        if ref is not None:
            for key in SEARCH_COST_KEYS:
                row[f"{key}_lr"], row[f"{key}_acc"], row[f"{key}_s"] = (
                    float(ref[f"{key}_lr"]),
                    float(ref[f"{key}_acc"]),
                    float(ref[f"{key}_s"]),
                )
            row["oracle_lr"], row["oracle_acc"] = float(ref["oracle_lr"]), float(ref["oracle_acc"])
            row["seq_score"] = {_lr_key(k): v for k, v in ast.literal_eval(ref["per_lr_score"]).items()}
        rows.append(row)
    rows.sort(key=lambda r: (TASKS.index(r["task"]), r["N"], r["seed"]))
    return rows


def _rank_of_winner(losses: dict[str, list[float]], winner: str, rung: int) -> int | None:
    """Where the final winner ranked at ``rung`` (1 = best) among the rates that reached it; None if it did not."""
    reached = {lr: v[rung] for lr, v in losses.items() if len(v) > rung}
    if winner not in reached:
        return None
    return 1 + sum(v < reached[winner] for lr, v in reached.items() if lr != winner)


def _markdown(rows: list[dict[str, Any]], record: RunRecord, wall_s: float, note: str) -> str:
    planned = sum(len(DEFAULTS[(t, "cpu")]["n"]) * len(DEFAULTS[(t, "cpu")]["seeds"]) for t in TASKS)
    lines = ["# Successive halving over the DE-ELBo learning rates (issue 33, route a)", "", record.header("cpu"), ""]
    lines += [f"- note: {note}"] if note else []
    lines += [
        f"- cells on record: {len(rows)} of {planned}; this run {wall_s / 60:.1f} min; settings: benchmarks/paper.py's"
        " CPU DEFAULTS (L2-SP, one torch thread), as search-cost-cpu",
        "- halving: `deelbo-halving` (4 rates batched; at 1/4 and 1/2 of the steps, rounded to a log step, the",
        "  worse half by training loss stop); batched: the same batched members with no cut (`deelbo`,",
        '  `batched="on"`); deelbo (sequential), tpe-budget, default and the figure\'s other strategies: '
        "benchmarks/results/search-cost-cpu.csv",
        "- runs: member-steps over one run's steps (halving: 2.0 for 4 rates); s: total wall-clock as `compare`"
        " reports it",
        "- winner at rung k: where the batched search's final choice ranked by rung loss at rung k (1 = kept first)",
        "",
        "Mean over the training sets (test accuracy %, s):",
        "",
        "| task | N | halving | batched | deelbo (seq) | tpe-budget | default | halving - tpe-budget | "
        "halving - deelbo | s halving | s batched | s deelbo | s tpe-budget | same rate as batched |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["task"], r["N"]) for r in rows}, key=lambda c: (TASKS.index(c[0]), c[1]))
    for task, n in keys:
        group = [r for r in rows if r["task"] == task and r["N"] == n]

        def mean(key: str, items: list[dict[str, Any]] = group) -> float:
            values = [float(r[key]) for r in items if key in r]
            return statistics.fmean(values) if values else float("nan")

        same = sum(r["halving_lr"] == r["batched_lr"] for r in group)
        lines.append(
            f"| {task} | {n} | {mean('halving_acc'):.1f} | {mean('batched_acc'):.1f} | {mean('deelbo_acc'):.1f} | "
            f"{mean('budget_acc'):.1f} | {mean('default_acc'):.1f} | "
            f"{mean('halving_acc') - mean('budget_acc'):+.1f} | {mean('halving_acc') - mean('deelbo_acc'):+.1f} | "
            f"{mean('halving_s'):.1f} | {mean('batched_s'):.1f} | {mean('deelbo_s'):.1f} | {mean('budget_s'):.1f} | "
            f"{same} of {len(group)} |"
        )
    lines += ["", f"![cost against accuracy]({STEM}.png) ([interactive]({STEM}.html))", ""]
    lines += ["Per training set: chosen rates, the rung losses by rate (rung 1, rung 2) and the final scores.", ""]
    lines += [
        "| task | N | seed | halving lr | batched lr | deelbo (seq) lr | oracle lr | halving acc | batched acc | "
        "winner at rung 1 / 2 | rung losses by lr | batched final score by lr |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        winner = _lr_key(r["batched_lr"])
        ranks = [_rank_of_winner(r["rung_losses"], winner, k) for k in (0, 1)]
        shown = " / ".join("-" if k is None else str(k) for k in ranks)
        lines.append(
            f"| {r['task']} | {r['N']} | {r['seed']} | {r['halving_lr']:g} | {r['batched_lr']:g} | "
            f"{r.get('deelbo_lr', float('nan')):g} | {r.get('oracle_lr', float('nan')):g} | {r['halving_acc']:.1f} | "
            f"{r['batched_acc']:.1f} | {shown} | {r['rung_losses']} | {r['batched_score']} |"
        )
    return "\n".join(lines) + "\n"


#: Figure labels by row key: search-cost-cpu's strategies and the two batched searches.
LABELS = {"halving": "deelbo-halving", "batched": "deelbo (batched)", **SEARCH_COST_LABELS}


def main() -> None:
    args, tasks = parse_cell_args(__doc__.split("\n", 1)[0], STEM)
    record = RunRecord.start()
    storage = od.open_storage(args.storage)
    started = time.perf_counter()

    def write(rows: list[dict[str, Any]]) -> None:
        write_csv(RESULTS / f"{STEM}.csv", rows)
        (RESULTS / f"{STEM}.md").write_text(_markdown(rows, record, time.perf_counter() - started, args.note))

    for name, n, seed in cells(tasks):
        run_cell(storage, name, n, seed, args.data_dir)
        rows = cell_rows(storage)
        r = next(r for r in rows if (r["task"], r["N"], r["seed"]) == (name, n, seed))
        print(
            f"{name} N={n} seed={seed}: halving lr={r['halving_lr']:g} {r['halving_acc']:.1f}% "
            f"{r['halving_s']:.0f} s; batched lr={r['batched_lr']:g} {r['batched_acc']:.1f}% "
            f"{r['batched_s']:.0f} s; rungs {r['rung_losses']}",
            flush=True,
        )
        write(rows)
    rows = cell_rows(storage)
    if not rows:
        sys.exit(f"no finished cell in {args.storage}")
    write(rows)
    png_error = write_figure(figure(rows, LABELS, {"deelbo (batched)": "#f7b6d2"}), RESULTS / STEM)
    if png_error:
        print(f"PNG not written ({png_error}); install kaleido and Debian's chromium", file=sys.stderr)
    print(f"wrote {RESULTS / (STEM + '.md')}")


if __name__ == "__main__":
    main()
