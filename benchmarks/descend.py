"""deelbo-descend against the 4-rate DE-ELBo search (issue 33): runs, wall-clock, accuracy, and the rate each picks.

Usage: python benchmarks/descend.py [--tasks digits,wordnet,split-cifar] [--data-dir ../shared/data] [--threads 1]

For every cell (task, N, training set) of the paper benchmark's CPU settings (benchmarks/paper.py's
DEFAULTS: the same N, seeds, steps and batch sizes), both searches run as their own studies: the
4-rate search (``deelbo``, one by one) and ``deelbo-descend`` (largest rate first, stopping once the
selection score gets worse). Each trial's test accuracy is recorded (the DE-ELBo trains on all N, so a
trial's model is the final model), so the table also shows the best rate in hindsight (the oracle)
and each search's regret against it. Writes benchmarks/results/descend-cpu.md and descend-cpu.csv;
storages go to benchmarks/results/descend-cpu.db (git-ignored; a rerun reuses finished studies).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

import optuna_deelbo as od
from optuna_deelbo.tuning import study_name_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, write_csv
from paper import DEFAULTS

#: The two searches compared.
SEARCHES = ("deelbo", "deelbo-descend")
TASKS = ("digits", "wordnet", "split-cifar")


def _task(name: str, n: int, seed: int, data_dir: str) -> od.TaskSpec:
    settings = DEFAULTS[(name, "cpu")]
    common = {"seed": seed, "prior": "l2-sp", "steps": settings["steps"], "batch_size": settings["batch_size"]}
    if name == "digits":
        return od.digits_task(n, pretrain_steps=settings["pretrain"], device="cpu", **common)[0]
    if name == "wordnet":
        return od.wordnet_task(n, max_length=16, trainable_layers=2, device="cpu", **common)[0]  # as paper.py
    return od.split_cifar_task(n, data_dir=data_dir, pretrain_steps=settings["pretrain"], device="cpu", **common)[0]


def _trial_s(trial: FrozenTrial) -> float:
    """A trial's wall-clock from Optuna's timestamps (writing its attrs included)."""
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return 0.0


def _search(storage: optuna.storages.BaseStorage, task: od.TaskSpec, name: str) -> dict[str, Any]:
    """Run (or reuse) one search; its runs trained, wall-clock, chosen rate and that model's test accuracy."""
    study_name = study_name_for(task, name)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        done = study.user_attrs.get("time:total_s") is not None
    except KeyError:
        done = False
    if not done:
        strategy = od.tuning.get_strategy(name, batched="off")
        od.tuning.run_strategy(strategy, task, storage, study_name, if_exists="overwrite")
        study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(trained, key=lambda t: float(t.value if t.value is not None else float("inf")))
    return {
        "runs": len(trained),
        "seconds": sum(_trial_s(t) for t in trials),
        "lr": best.params["lr"],
        "accuracy": 100.0 * float(best.user_attrs["test:accuracy"]),
        "per_lr": {t.params["lr"]: 100.0 * float(t.user_attrs["test:accuracy"]) for t in trained},
        "scores": {t.params["lr"]: float(t.value) for t in trained if t.value is not None},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list from {','.join(TASKS)}")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--storage", default=f"sqlite:///{RESULTS / 'descend-cpu.db'}")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {','.join(TASKS)}")
    record = RunRecord.start()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = od.open_storage(args.storage)
    rows: list[dict[str, Any]] = []
    planned = sum(len(DEFAULTS[(t, "cpu")]["n"]) * len(DEFAULTS[(t, "cpu")]["seeds"]) for t in tasks)
    started = time.perf_counter()
    for name in tasks:
        settings = DEFAULTS[(name, "cpu")]
        for n in settings["n"]:
            for seed in settings["seeds"]:
                task = _task(name, n, seed, args.data_dir)
                grid, descend = (_search(storage, task, s) for s in SEARCHES)
                oracle = max(grid["per_lr"].items(), key=lambda item: item[1])
                rows.append(
                    {
                        "task": name,
                        "N": n,
                        "seed": seed,
                        "deelbo_lr": grid["lr"],
                        "deelbo_acc": grid["accuracy"],
                        "deelbo_runs": grid["runs"],
                        "deelbo_s": grid["seconds"],
                        "descend_lr": descend["lr"],
                        "descend_acc": descend["accuracy"],
                        "descend_runs": descend["runs"],
                        "descend_s": descend["seconds"],
                        "oracle_lr": oracle[0],
                        "oracle_acc": oracle[1],
                        "per_lr_acc": {lr: round(a, 2) for lr, a in sorted(grid["per_lr"].items(), reverse=True)},
                        "per_lr_score": {lr: round(s, 4) for lr, s in sorted(grid["scores"].items(), reverse=True)},
                    }
                )
                row = rows[-1]
                print(
                    f"{name} N={n} seed={seed}: deelbo lr={row['deelbo_lr']:g} {row['deelbo_acc']:.1f}% "
                    f"({row['deelbo_s']:.0f} s), descend lr={row['descend_lr']:g} {row['descend_acc']:.1f}% "
                    f"({row['descend_runs']} runs, {row['descend_s']:.0f} s); oracle lr={oracle[0]:g} {oracle[1]:.1f}%",
                    flush=True,
                )
                # after every cell: a long run stopped early leaves the cells it finished on record
                write_csv(RESULTS / "descend-cpu.csv", rows)
                text = _markdown(rows, record, time.perf_counter() - started, planned)
                (RESULTS / "descend-cpu.md").write_text(text)
    print(f"wrote {RESULTS / 'descend-cpu.md'}")


def _markdown(rows: list[dict[str, Any]], record: RunRecord, wall_s: float, planned: int) -> str:
    lines = ["# deelbo-descend against the 4-rate DE-ELBo search (issue 33, route c)", "", record.header("cpu"), ""]
    lines += [
        f"- settings: benchmarks/paper.py's CPU DEFAULTS per task (L2-SP, one torch thread); {wall_s / 60:.1f} min",
        f"- cells (task, N, training set) on record: {len(rows)} of {planned}"
        + ("" if len(rows) == planned else " (the run stopped before the others)"),
        "- runs: DE-ELBo runs trained (a skipped rate is pruned untrained); s: the search's wall-clock, every trial's",
        "  Optuna timestamps (training, selection pass and the reporting-only test evaluation each trial makes)",
        "- oracle: the rate with the best test accuracy among the 4 (hindsight); regret = oracle - search",
        "",
        "| task | N | deelbo acc | descend acc | descend - deelbo | runs (descend) | s deelbo | s descend | "
        "speed-up | same rate | regret deelbo | regret descend |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(r["task"], r["N"]) for r in rows}, key=lambda c: (TASKS.index(c[0]), c[1]))
    for task, n in cells:
        group = [r for r in rows if r["task"] == task and r["N"] == n]

        def mean(key: str, items: list[dict[str, Any]] = group) -> float:
            return statistics.fmean(float(r[key]) for r in items)

        same = sum(r["deelbo_lr"] == r["descend_lr"] for r in group)
        lines.append(
            f"| {task} | {n} | {mean('deelbo_acc'):.1f} | {mean('descend_acc'):.1f} | "
            f"{mean('descend_acc') - mean('deelbo_acc'):+.1f} | {mean('descend_runs'):.1f} | {mean('deelbo_s'):.1f} | "
            f"{mean('descend_s'):.1f} | {mean('deelbo_s') / mean('descend_s'):.2f}x | {same}/{len(group)} | "
            f"{mean('oracle_acc') - mean('deelbo_acc'):.1f} | {mean('oracle_acc') - mean('descend_acc'):.1f} |"
        )
    lines += ["", "Per training set: test accuracy % and selection score per learning rate (largest first).", ""]
    lines += ["| task | N | seed | deelbo lr | descend lr (runs) | oracle lr | accuracy by lr | score by lr |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['N']} | {r['seed']} | {r['deelbo_lr']:g} | {r['descend_lr']:g} "
            f"({r['descend_runs']}) | {r['oracle_lr']:g} | {r['per_lr_acc']} | {r['per_lr_score']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
