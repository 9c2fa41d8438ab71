"""Ablation of the DE-ELBo recipe: each choice toggled against the default, per learning rate.

Usage:  python benchmarks/ablation.py                       # digits N=50/100/200 + Split-CIFAR N=50/500, 3 seeds
        python benchmarks/ablation.py --tasks digits:50 --seeds 0 --variants default,adam
        python benchmarks/ablation.py --aggregate-only      # rebuild the tables from the run files

Every (task, N, seed, variant, learning rate) is one ``fit_deelbo`` run on all N examples,
scored by every selection rule (``train-loss``, ``full-pass``, ``elbo``, ``laplace``) and
evaluated on the test set; the same run is then evaluated again after BatchNorm
recalibration with the mean weights (the ``bn`` rows cost no extra training). One CSV row
per run goes to benchmarks/results/ablation-runs.csv as soon as it ends (a rerun skips the
rows it finds, so an interrupted run continues), and the tables are rebuilt from that file:

* ablation.md / ablation.csv: per (task, N, variant, rule), mean over seeds of the chosen
  learning rate's test accuracy, the best learning rate's, the regret (best - chosen), test
  NLL, lambda, tau and sigma of the chosen run;
* ablation-per-lr.csv: test accuracy per learning rate (to see which ones train at all).

Regret uses the test set only to *report* how good a choice was; no rule sees it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import optuna_deelbo as od
from optuna_deelbo.bayes import RECIPES, SELECTION_RULES, DEELBoRecipe
from optuna_deelbo.tuning.strategies import LEARNING_RATES
from optuna_deelbo.tuning.trials import fit_deelbo, recalibrate_for_mean_weights, score_deelbo_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, write_csv

#: variant name -> (recipe changes against the v0.1 recipe, budget multiplier). ``default`` and
#: ``paper`` are the named recipes as they stand; the BatchNorm-recalibrated rows (``+bn``) are post-hoc.
#: The run files also hold ``mode-parameter`` rows (per-weight sigma under SGD, commit 55f9245: sigma
#: never left its initial value) and ``mode-parameter-adam`` rows (its own Adam, commits up to
#: 0c753c4: 0.4-4.5 points below scalar), measured before the DE-ELBo refused per-weight sigma; the
#: tables show every variant found in the run files.
VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
    "v0.1": ({}, 1.0),
    "init-1e-4": ({"init_sigma": 1e-4}, 1.0),
    "shared-sigma": ({"share_head_sigma": True}, 1.0),
    "clip-1": ({"clip_norm": 1.0}, 1.0),
    "mode-layer": ({"sigma_mode": "layer"}, 1.0),
    "sigma-adam": ({"sigma_optimizer": "adam", "sigma_lr": 0.05}, 1.0),
    "per-layer-lambda": ({"prior_structure": "layer"}, 1.0),
    "steps-x2": ({}, 2.0),
    "paper": ({"__recipe__": "paper"}, 1.0),
    "default": ({"__recipe__": "default"}, 1.0),
}
DEFAULT_VARIANTS = tuple(VARIANTS)
RUNS_GLOB = "ablation-runs*.csv"
FIELDS = [
    "task", "n", "seed", "variant", "bn", "lr", "steps", "accuracy", "nll", "lambda", "tau", "sigma", "train_s",
    *(f"score:{r}" for r in SELECTION_RULES),
]  # fmt: skip


def variant_recipe(name: str) -> DEELBoRecipe:
    """The recipe a variant trains with (the default with the variant's changes)."""
    changes, _ = VARIANTS[name]
    if "__recipe__" in changes:
        return RECIPES[changes["__recipe__"]]
    return RECIPES["v0.1"].replace(**changes)


def build_task(kind: str, n: int, seed: int, args: argparse.Namespace) -> od.TaskSpec:
    """The benchmark task (the package's CPU budgets: digits 300 x 64, Split-CIFAR 100 x 32).

    Split-CIFAR is tested on a fixed stratified subset of ``--cifar-test-subset`` of its 5,000
    test images (the same for every run), to fit the ablation into a CPU session.
    """
    if kind == "digits":
        task, _ = od.digits_task(n, seed=seed, steps=args.digits_steps)
    else:
        task, _ = od.split_cifar_task(
            n,
            data_dir=args.data_dir,
            seed=seed,
            steps=args.cifar_steps,
            batch_size=args.cifar_batch_size,
            pretrain_steps=args.pretrain_steps,
            cache_dir=args.cache_dir,
        )
        task = task.with_test_subset(args.cifar_test_subset)
    return task


def _done(path: Path) -> set[tuple[str, ...]]:
    if not path.is_file():
        return set()
    with path.open() as f:
        rows = [(r["task"], r["n"], r["seed"], r["variant"], r["bn"], r["lr"]) for r in csv.DictReader(f)]
    # done: its recalibrated row (written last) is there, or its recipe recalibrates during training
    recalibrating = {v for v in VARIANTS if variant_recipe(v).bn_recalibration}
    return {(*k[:4], "0", k[5]) for k in rows if k[4] == "1" or k[3] in recalibrating}


def _metrics_row(
    task: od.TaskSpec,
    objective: od.bayes.DEELBoObjective,
    result: od.train.TrainResult,
    rules: tuple[str, ...] = SELECTION_RULES,
) -> dict[str, float]:
    assert task.test is not None
    test = od.evaluate(objective.model, task.test.x, task.test.y, transform=task.eval_transform)
    scores = dict.fromkeys(SELECTION_RULES, math.nan) | score_deelbo_run(task, objective, result, rules=rules)
    last = result.history[-1]
    return {
        "accuracy": test.accuracy,
        "nll": test.nll,
        "lambda": last["lambda"],
        "tau": last.get("tau", math.nan),
        "sigma": objective.deelbo.posterior.mean_sigma(),
        **{f"score:{r}": v for r, v in scores.items()},
    }


def run_all(args: argparse.Namespace, write: Callable[[dict[str, Any]], None], done: set[tuple[str, ...]]) -> None:
    for spec in args.tasks:
        kind, n_text = spec.split(":")
        n = int(n_text)
        for seed in args.seeds:
            base = build_task(kind, n, seed, args)
            for variant in args.variants:
                _, budget = VARIANTS[variant]
                task = dataclasses.replace(base, recipe=variant_recipe(variant), steps=round(base.steps * budget))
                for lr in args.lrs:
                    key = (kind, str(n), str(seed), variant, "0", repr(lr))
                    if key in done:
                        continue
                    torch.manual_seed(seed)
                    start = time.perf_counter()
                    try:
                        objective, result = fit_deelbo(task, lr)
                    except od.TrainingDiverged as exc:
                        print(f"{kind} N={n} seed={seed} {variant} lr={lr}: diverged ({exc})", flush=True)
                        continue
                    seconds = time.perf_counter() - start
                    common = {"task": kind, "n": n, "seed": seed, "variant": variant, "lr": repr(lr)}
                    common |= {"steps": task.steps, "train_s": seconds}
                    row = {**common, "bn": 0, **_metrics_row(task, objective, result)}
                    write(row)
                    if not task.deelbo_recipe.bn_recalibration:
                        recalibrate_for_mean_weights(task, objective.model)
                        # the recalibrated rows: test metrics and the (unchanged) train-loss rule only
                        write({**common, "bn": 1, **_metrics_row(task, objective, result, ("train-loss",))})
                    print(
                        f"{kind} N={n} seed={seed} {variant:>16} lr={lr:<7g} acc={row['accuracy']:.3f} "
                        f"sigma={row['sigma']:.2g} lam={row['lambda']:.2g} {seconds:.1f}s",
                        flush=True,
                    )


def aggregate(rows: list[dict[str, str]], variants: list[str]) -> list[dict[str, Any]]:
    """One table row per (task, N, variant, bn, rule): means over seeds of the chosen run's numbers."""
    runs: dict[tuple[str, int, str, int], dict[int, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        runs[(r["task"], int(r["n"]), r["variant"], int(r["bn"]))][int(r["seed"])].append(r)
    out: list[dict[str, Any]] = []
    for (kind, n, variant, bn), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3])):
        if variant not in variants:
            continue
        by_seed = dict(sorted(by_seed.items()))
        for rule in SELECTION_RULES:
            if any(math.isnan(float(r[f"score:{rule}"])) for seed_rows in by_seed.values() for r in seed_rows):
                continue
            chosen, best = [], []
            for seed_rows in by_seed.values():  # in seed order (sorted below)
                pick = min(seed_rows, key=lambda r: float(r[f"score:{rule}"]))
                chosen.append(pick)
                best.append(max(float(r["accuracy"]) for r in seed_rows))
            acc = [float(r["accuracy"]) for r in chosen]

            def mean(key: str, picked: list[dict[str, str]] = chosen) -> float:
                return statistics.fmean(float(r[key]) for r in picked)

            out.append(
                {
                    "task": kind,
                    "n": n,
                    "variant": variant + ("+bn" if bn else ""),
                    "rule": rule,
                    "seeds": len(by_seed),
                    "chosen_lr": "/".join(f"{float(r['lr']):g}" for r in chosen),
                    "accuracy": 100 * statistics.fmean(acc),
                    "best_lr_accuracy": 100 * statistics.fmean(best),
                    "regret": 100 * statistics.fmean(b - a for a, b in zip(acc, best, strict=True)),
                    "nll": mean("nll"),
                    "lambda": mean("lambda"),
                    "tau": mean("tau"),
                    "sigma": mean("sigma"),
                    "per_seed": dict(zip(by_seed, acc, strict=True)),  # seed -> accuracy (not in the CSV)
                }
            )
    return out


def per_lr(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Mean test accuracy per (task, N, variant, bn, lr) over seeds."""
    groups: dict[tuple[str, int, str, int, float], list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], int(r["n"]), r["variant"], int(r["bn"]), float(r["lr"]))].append(float(r["accuracy"]))
    return [
        {
            "task": k[0],
            "n": k[1],
            "variant": k[2] + ("+bn" if k[3] else ""),
            "lr": k[4],
            "accuracy": 100 * statistics.fmean(v),
            "seeds": len(v),
        }
        for k, v in sorted(groups.items())
    ]


#: (row label, variant, rule) of the compact matrix against the default (v0.1 + BatchNorm recalibration).
TOGGLES: tuple[tuple[str, str, str | None], ...] = (
    ("no BatchNorm recalibration (v0.1)", "v0.1", None),
    ("init sigma 1e-4", "init-1e-4+bn", None),
    ("one sigma for body + head", "shared-sigma+bn", None),
    ("clipping 1 (not 10)", "clip-1+bn", None),
    ("sigma per layer", "mode-layer+bn", None),
    ("sigma per weight (Adam)", "mode-parameter-adam+bn", None),
    ("sigma by its own Adam (0.05)", "sigma-adam+bn", None),
    ("lambda per layer", "per-layer-lambda+bn", None),
    ("2x the steps", "steps-x2+bn", None),
    ("recipe paper (no recalibration)", "paper", None),
    ("selection full-pass (v0.1 runs)", "v0.1", "full-pass"),
    ("selection elbo (v0.1 runs)", "v0.1", "elbo"),
    ("selection laplace (v0.1 runs)", "v0.1", "laplace"),
)


def toggle_matrix(table: list[dict[str, Any]], default_rule: str) -> list[str]:
    """Markdown: each choice's accuracy minus the default's (points; seeds paired by mean), per task and N.

    Selection-rule rows compare against ``train-loss`` on the same (v0.1) runs.
    """
    cells = {(r["task"], r["n"], r["variant"], r["rule"]): r for r in table}
    columns = sorted({(r["task"], r["n"]) for r in table}, key=lambda c: (c[0] != "digits", c[1]))
    head = "| choice | " + " | ".join(f"{t} N={n}" for t, n in columns) + " |"
    lines = [
        "## Each choice against the default (points of test accuracy at the chosen learning rate, mean over seeds)",
        "",
        f"Default = v0.1 + BatchNorm recalibration, rule {default_rule}; its accuracy in the first row. A cell shows "
        "the variant's accuracy minus the default's on the same training sets (seeds; their number in brackets "
        "when fewer than the default's); selection-rule rows compare with train-loss on the same runs and add the "
        "regret.",
        "",
        head,
        "|---|" + "---|" * len(columns),
    ]
    base_row = ["default (v0.1 + BatchNorm recalibration)"]
    for t, n in columns:
        base = cells.get((t, n, "v0.1+bn", default_rule))
        base_row.append(f"{base['accuracy']:.1f}" if base else "-")
    lines.append("| " + " | ".join(base_row) + " |")
    for label, variant, rule in TOGGLES:
        row = [label]
        for t, n in columns:
            reference = cells.get((t, n, "v0.1" if rule else "v0.1+bn", default_rule))
            cell = cells.get((t, n, variant, rule or default_rule))
            if reference is None or cell is None:
                row.append("-")
                continue
            shared = sorted(set(cell["per_seed"]) & set(reference["per_seed"]))
            diff = statistics.fmean(100 * (cell["per_seed"][sd] - reference["per_seed"][sd]) for sd in shared)
            text = f"{diff:+.1f}"
            if len(shared) < reference["seeds"]:
                text += f" ({len(shared)} seeds)"
            if rule:
                text += f", regret {cell['regret']:.1f}"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_tables(record: RunRecord, args: argparse.Namespace) -> None:
    files = sorted(RESULTS.glob(RUNS_GLOB))
    rows = []
    for path in files:
        with path.open() as f:
            rows += list(csv.DictReader(f))
    table = aggregate(rows, sorted({r["variant"] for r in rows}))
    write_csv(RESULTS / "ablation.csv", table, ignore=("per_seed",))
    lr_rows = per_lr(rows)
    write_csv(RESULTS / "ablation-per-lr.csv", lr_rows)
    default_rule = RECIPES["default"].selection
    lines = [
        "# DE-ELBo recipe ablation",
        "",
        record.header(),
        f"- runs: {len(rows)} rows of {', '.join(p.name for p in files)} (one per task, N, seed, variant, lr, "
        "BatchNorm recalibration)",
        f"- learning rates {', '.join(f'{lr:g}' for lr in args.lrs)}; digits {args.digits_steps} steps x 64, "
        f"Split-CIFAR (cifar-resnet20, CIFAR-10 JPEG) {args.cifar_steps} steps x {args.cifar_batch_size}, "
        f"pretraining {args.pretrain_steps} steps, tested on a fixed stratified {args.cifar_test_subset} of its 5,000 "
        "test images; L2-SP prior",
        "- accuracy: test accuracy (%) of the learning rate the rule chose, mean over seeds; best lr: of the best "
        "learning rate in hindsight; regret = best lr - chosen (points); NLL, lambda, tau, sigma of the chosen run",
        "",
        f"## Each variant with the default selection rule ({default_rule})",
        "",
        "| task | N | variant | seeds | chosen lr (per seed) | accuracy % | best lr % | regret | test NLL | lambda "
        "| tau | sigma |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = "| {task} | {n} | {variant} | {seeds} | {chosen_lr} | {accuracy:.1f} | {best_lr_accuracy:.1f} | {regret:.1f} | {nll:.3f} | {lambda:.2g} | {tau:.2g} | {sigma:.2g} |"  # noqa: E501
    lines += [fmt.format(**r) for r in table if r["rule"] == default_rule]
    lines += ["", *toggle_matrix(table, default_rule)]
    lines += [
        "",
        "## Selection rules (every rule on the same runs)",
        "",
        "| task | N | variant | rule | chosen lr (per seed) | accuracy % | best lr % | regret |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = "| {task} | {n} | {variant} | {rule} | {chosen_lr} | {accuracy:.1f} | {best_lr_accuracy:.1f} | {regret:.1f} |"
    lines += [
        fmt.format(**r)
        for r in table
        if r["variant"] in ("v0.1", "v0.1+bn", "default", "default+bn", "paper", "sigma-adam")
    ]
    (RESULTS / "ablation.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'ablation.md'} ({len(table)} table rows)")


def _list(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [cast(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks", type=_list(str), default=["digits:50", "digits:100", "digits:200", "cifar:50", "cifar:500"]
    )
    parser.add_argument("--seeds", type=_list(int), default=[0, 1, 2])
    parser.add_argument("--variants", type=_list(str), default=list(DEFAULT_VARIANTS))
    parser.add_argument("--lrs", type=_list(float), default=list(LEARNING_RATES))
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--cifar-steps", type=int, default=100)
    parser.add_argument("--cifar-batch-size", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--cifar-test-subset", type=int, default=2000, help="Split-CIFAR test images used")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="ablation-runs.csv", help="run file in benchmarks/results/ (appended to)")
    parser.add_argument("--aggregate-only", action="store_true")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    if not args.aggregate_only:
        runs_file = RESULTS / args.runs
        if not runs_file.match(RUNS_GLOB):
            parser.error(f"--runs must match {RUNS_GLOB}")
        done = _done(runs_file)
        new = not runs_file.is_file()
        with runs_file.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()

            def write(row: dict[str, Any]) -> None:
                writer.writerow(row)
                f.flush()

            run_all(args, write, done)
    write_tables(record, args)


if __name__ == "__main__":
    main()
