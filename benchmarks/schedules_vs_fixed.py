"""Weight-decay schedules vs the best fixed weight decay, for 3 network widths (Lu et al. 2017, Figure 1).

Usage: python benchmarks/schedules_vs_fixed.py [--widths 8,16,32] [--seeds 0,1,2] [--n-train 100] [--steps 300]

The question: does pulling the weight decay down during training (strong first) beat the best
constant weight decay trained for the same total number of steps, and does the gain depend on
the width? Each width trains a :class:`SmallCNN` from scratch (prior ``l2-zero``) on digits 5-9
with N examples. Every strategy searches the same 4 learning rates, trains every run for the
same number of steps, picks by validation NLL on the 80/20 split and retrains the winner on all
N with its schedule; ``grid`` additionally searches 6 constant weight decays (the best fixed
lambda). DE-ELBo (learned lambda, no validation split) is the reference row.

Writes benchmarks/results/schedules-vs-fixed.{md,csv}: test accuracy mean (min-max) over seeds
per width and strategy, and the gain of each schedule over the best fixed weight decay.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import optuna

import optuna_deelbo as od
from optuna_deelbo.tuning import compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RunRecord, result_row, write_csv

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("grid", "pulldown", "pullup", "adaptive", "deelbo")
SCHEDULES = ("pulldown", "pullup", "adaptive")


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def scratch_task(width: int, n_train: int, seed: int, steps: int, batch_size: int) -> od.TaskSpec:
    """Digits 5-9 with ``n_train`` examples, a width-``width`` SmallCNN trained from scratch."""
    data = od.data.digits_transfer(n_train, seed=seed)
    return od.TaskSpec(
        name=f"digits-scratch-w{width}-N{n_train}-seed{seed}",
        model_factory=functools.partial(od.models.SmallCNN, data.n_classes, int(data.train.x.shape[1]), width=width),
        train=data.train,
        test=data.test,
        prior="l2-zero",
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device="cpu",
        progress=False,
    )


def _summary(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


def main() -> None:
    record = RunRecord.start()  # the code that runs, even if HEAD moves during a long run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=_ints, default=[8, 16, 32])
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--storage", default="sqlite:///bench-schedules.db")
    parser.add_argument("--out", default=str(RESULTS / "schedules-vs-fixed"))
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = od.open_storage(args.storage)
    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    for width in args.widths:
        for seed in args.seeds:
            task = scratch_task(width, args.n_train, seed, args.steps, args.batch_size)
            for r in compare(task, STRATEGIES, storage, if_exists="overwrite"):
                rows.append(
                    {
                        **result_row(r, width=width, seed=seed),
                        "learned_weight_decay": r.learned.get(od.tuning.attrs.LEARNED_WEIGHT_DECAY, float("nan")),
                    }
                )
                print(f"width {width} seed {seed} {r.strategy}: {100 * r.test_accuracy:.1f}% in {r.total_s:.1f} s")
    wall = time.perf_counter() - started

    out = Path(args.out)
    write_csv(out.with_suffix(".csv"), rows)

    def acc(width: int, strategy: str) -> list[float]:
        return [float(r["test_accuracy"]) for r in rows if r["width"] == width and r["strategy"] == strategy]  # type: ignore[arg-type]

    def seconds(width: int, strategy: str) -> float:
        return statistics.mean(float(r["total_s"]) for r in rows if r["width"] == width and r["strategy"] == strategy)  # type: ignore[arg-type]

    header = "| width | " + " | ".join(STRATEGIES) + " |"
    lines = [header, "|" + "---|" * (len(STRATEGIES) + 1)]
    for width in args.widths:
        lines.append(f"| {width} | " + " | ".join(_summary(acc(width, s)) for s in STRATEGIES) + " |")
    accuracy_table = "\n".join(lines)

    gain_lines = [
        "| width | " + " | ".join(f"{s} - best fixed" for s in SCHEDULES) + " | seeds where pull-down wins |",
        "|" + "---|" * (len(SCHEDULES) + 2),
    ]
    verdicts = []
    for width in args.widths:
        fixed = acc(width, "grid")
        cells = []
        for s in SCHEDULES:
            diffs = [a - b for a, b in zip(acc(width, s), fixed, strict=True)]
            cells.append(f"{100 * statistics.mean(diffs):+.1f} ({100 * min(diffs):+.1f} to {100 * max(diffs):+.1f})")
        wins = sum(a > b for a, b in zip(acc(width, "pulldown"), fixed, strict=True))
        gain_lines.append(f"| {width} | " + " | ".join(cells) + f" | {wins} of {len(fixed)} |")
        gain = 100 * (statistics.mean(acc(width, "pulldown")) - statistics.mean(fixed))
        verdicts.append(f"width {width}: {gain:+.1f} points")
    gain_table = "\n".join(gain_lines)

    cost_lines = ["| width | " + " | ".join(STRATEGIES) + " |", "|" + "---|" * (len(STRATEGIES) + 1)]
    for width in args.widths:
        cost_lines.append(f"| {width} | " + " | ".join(f"{seconds(width, s):.1f}" for s in STRATEGIES) + " |")
    cost_table = "\n".join(cost_lines)

    example = scratch_task(args.widths[0], args.n_train, args.seeds[0], args.steps, args.batch_size)
    n_test = len(example.test) if example.test else 0
    text = f"""# Weight-decay schedules vs the best fixed weight decay, 3 widths

{record.header()}
- task: SmallCNN of width w (channels w, 2w, 2w) trained from scratch (prior `l2-zero`) on digits
  5-9, N = {args.n_train} training examples per seed (seeds {", ".join(map(str, args.seeds))}),
  {n_test} test images, {args.steps} SGD steps x batch {args.batch_size} for every run
- protocol (the same for every row): 4 learning rates {od.tuning.strategies.LEARNING_RATES}, validation NLL on
  the 80/20 split picks the winner, which is retrained on all N for the same {args.steps} steps with its
  weight decay (schedule). `grid` = the best *fixed* weight decay out of {od.tuning.strategies.WEIGHT_DECAYS}
  (24 runs); `pulldown` = weight decay stepped through those 6 values from 1e-2 down to 1e-7
  ({args.steps // 6} steps each); `pullup` = the reverse; `adaptive` = feedback rule (start 1e-4, every
  {args.steps // 10} steps x2 when train accuracy leads validation accuracy by > 5 points, /2 when within
  1 point); `deelbo` learns lambda with no validation split (reference).
- wall-clock for the whole table: {wall:.0f} s

## Test accuracy (%), mean (min-max) over {len(args.seeds)} seeds

{accuracy_table}

## Gain over the best fixed weight decay (test accuracy points, mean (min to max) over seeds, paired by seed)

{gain_table}

Pull-down minus best fixed, by width: {"; ".join(verdicts)}. A negative number means the schedule
LOSES to the best constant weight decay. With {n_test} test images one image is
{100 / max(1, n_test):.2f} points; differences below about 1 point are within seed noise.

## Mean total seconds per strategy (tuning + retrain)

{cost_table}
"""
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
