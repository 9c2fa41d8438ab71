"""The whole DE-ELBo learning-rate search in one run: sequential vs batched vs one single run, and grid search.

Usage: python benchmarks/batched.py [--device cpu] [--tasks digits,split-cifar] [--data-dir ../shared/data]
       [--threads 1] [--tag cpu]

Writes benchmarks/results/batched-<tag>.md and .csv. Per task, each row is a whole search run by
``od.tuning.run_strategy`` into its own in-memory study, in this order: one DE-ELBo run (lr 0.03), the
4-learning-rate DE-ELBo search one trial after another (``batched="off"``), the same search as one
batched model (``batched="on"``: ``torch.func.vmap`` over the members), and grid search (4 lr x 6
weight decays + retraining the winner). Costs are the strategies' own ``total_s`` (DE-ELBo: the
trials' wall-clock without their reporting-only test evaluations; grid: trials + retraining). The
exactness table compares the batched search's trials with the sequential one's, learning rate by
learning rate. Goals from issue 25: batched <= 1.5x one single run; the DE-ELBo search >= 10x
cheaper than grid.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

import optuna_deelbo as od
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning.strategies import DEELBoStrategy, GridStrategy, Strategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, write_csv

TASKS: tuple[str, ...] = ("digits", "split-cifar")
#: The single run's learning rate (the one both tasks' DE-ELBo searches chose in the paper benchmarks).
SINGLE_LR = 0.03


def build_task(name: str, args: argparse.Namespace) -> tuple[od.TaskSpec, str]:
    """The task and a one-line description of its budget."""
    if name == "digits":
        task, _ = od.digits_task(100, steps=args.digits_steps, device=args.device)
        return task, f"digits N = 100, SmallCNN, {args.digits_steps} x 64"
    task, _ = od.split_cifar_task(
        50,
        data_dir=args.data_dir,
        steps=args.cifar_steps,
        batch_size=32,
        pretrain_steps=args.pretrain_steps,
        device=args.device,
    )
    return (
        task,
        f"Split-CIFAR N = 50, cifar-resnet20, {args.cifar_steps} x 32 (pretraining {args.pretrain_steps} steps)",
    )


@dataclass
class Row:
    task: str
    search: str
    strategy: Strategy
    result: od.tuning.StrategyResult
    trials: list[optuna.trial.FrozenTrial]
    wall_s: float

    def csv(self) -> dict[str, Any]:
        train_s = sum(float(t.user_attrs.get(A.TIME_TRAIN_S, 0.0)) for t in self.trials)
        return {
            "task": self.task,
            "search": self.search,
            "trials": len(self.trials),
            "train_s": train_s,
            "total_s": self.result.total_s,
            "wall_s": self.wall_s,
            "test_accuracy": self.result.test_accuracy,
            "best_params": self.result.best_params,
        }


def run_search(task: od.TaskSpec, name: str, search: str, strategy: Strategy) -> Row:
    storage = optuna.storages.InMemoryStorage()
    start = time.perf_counter()
    result = od.tuning.run_strategy(strategy, task, storage, f"{name}/{search}")
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name=f"{name}/{search}", storage=storage).trials
    print(
        f"{name} {search}: total {result.total_s:.1f} s (wall {wall:.1f} s), acc {result.test_accuracy:.4f}", flush=True
    )
    return Row(name, search, strategy, result, trials, wall)


def exactness(sequential: Row, batched: Row) -> list[dict[str, Any]]:
    """Per learning rate: the sequential and batched trials' value, learned values and test accuracy."""
    rows = []
    by_lr = {t.params["lr"]: t for t in batched.trials}
    for seq in sequential.trials:
        bat = by_lr[seq.params["lr"]]
        row: dict[str, Any] = {
            "task": sequential.task,
            "lr": seq.params["lr"],
            "state": f"{seq.state.name}/{bat.state.name}",
        }
        for key, label in (
            (None, "value"),
            (A.LEARNED_LAMBDA, "lambda"),
            (A.LEARNED_SIGMA, "sigma"),
            (A.LEARNED_TAU, "tau"),
            (A.TEST_ACCURACY, "accuracy"),
        ):
            a = seq.value if key is None else seq.user_attrs.get(key)
            b = bat.value if key is None else bat.user_attrs.get(key)
            row[f"{label}_seq"], row[f"{label}_bat"] = a, b
        rows.append(row)
    return rows


def _f(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _rel(a: Any, b: Any) -> str:
    if a is None or b is None:
        return "-"
    return f"{abs(a - b) / max(abs(a), 1e-30):.1e}"


def main() -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--cifar-steps", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = od.train.resolve_device(args.device)
    tag = args.tag or device.type

    rows: list[Row] = []
    exact: list[dict[str, Any]] = []
    budgets: list[str] = []
    for name in args.tasks.split(","):
        task, budget = build_task(name, args)
        budgets.append(f"{name}: {budget}")
        single = run_search(task, name, "single", DEELBoStrategy([SINGLE_LR], batched="off"))
        sequential = run_search(task, name, "sequential", DEELBoStrategy(batched="off"))
        batched = run_search(task, name, "batched", DEELBoStrategy(batched="on"))
        grid = run_search(task, name, "grid", GridStrategy())
        rows += [single, sequential, batched, grid]
        exact += exactness(sequential, batched)

    lines = [
        "| task | search | trials | training s | total s | x one run | grid / this | test acc | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        same = [r for r in rows if r.task == row.task]
        one = next(r for r in same if r.search == "single").result.total_s
        grid = next(r for r in same if r.search == "grid").result.total_s
        c = row.csv()
        lines.append(
            f"| {row.task} | {row.search} | {c['trials']} | {c['train_s']:.1f} | {c['total_s']:.1f} | "
            f"{c['total_s'] / one:.2f} | {grid / c['total_s']:.1f} | {100 * c['test_accuracy']:.1f} | "
            f"{c['best_params']} |"
        )
    exact_lines = [
        "| task | lr | state seq/bat | value seq / bat (rel) | lambda seq / bat (rel) | sigma (rel) | tau (rel) "
        "| test acc seq / bat |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in exact:
        exact_lines.append(
            f"| {e['task']} | {e['lr']:g} | {e['state']} | {_f(e['value_seq'])} / {_f(e['value_bat'])} "
            f"({_rel(e['value_seq'], e['value_bat'])}) | {_f(e['lambda_seq'])} / {_f(e['lambda_bat'])} "
            f"({_rel(e['lambda_seq'], e['lambda_bat'])}) | {_rel(e['sigma_seq'], e['sigma_bat'])} | "
            f"{_rel(e['tau_seq'], e['tau_bat'])} | {_f(e['accuracy_seq'])} / {_f(e['accuracy_bat'])} |"
        )
    goals = []
    for name in dict.fromkeys(r.task for r in rows):
        same = {r.search: r.result.total_s for r in rows if r.task == name}
        ratio, cheaper = same["batched"] / same["single"], same["grid"] / min(same["batched"], same["sequential"])
        goals.append(
            f"- {name}: batched = {ratio:.2f}x one single run (goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}); "
            f"the DE-ELBo search (the faster of sequential and batched) is {cheaper:.1f}x cheaper than grid "
            f"(goal >= 10: {'met' if cheaper >= 10 else 'NOT met'})"
        )
    text = f"""# The DE-ELBo search in one run: sequential vs batched learning rates

{record.header(str(device))}
- tasks: {"; ".join(budgets)}
- each row is one whole search (`od.tuning.run_strategy`, in-memory storage); total = the strategy's own cost
  (DE-ELBo: trial wall-clock without the reporting-only test evaluations; grid: 24 trials + retraining the winner);
  training s = the trials' `time:train_s` (batched: each trial's share of the one batched run)

{chr(10).join(lines)}

Goals (issue 25):
{chr(10).join(goals)}

## Exactness: the batched trials against the sequential ones, per learning rate

{chr(10).join(exact_lines)}
"""
    out = RESULTS / f"batched-{tag}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    write_csv(RESULTS / f"batched-{tag}.csv", [r.csv() for r in rows])
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
