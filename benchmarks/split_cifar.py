"""Split-CIFAR table: DE-ELBo vs grid vs TPE over N and seeds (paper's Tables 2 and 3 layout).

Usage (paper-like, GPU):  python benchmarks/split_cifar.py --n 50,500,5000 --seeds 0,1,2
Usage (CPU, small):       python benchmarks/split_cifar.py --n 50 --seeds 0 --steps 100 --batch-size 32 \
                              --pretrain-steps 500 --tag cpu-small

Pretrains cifar-resnet20 on CIFAR-10 (JPEG) classes 0-4 once per seed (cached), fine-tunes on
classes 5-9, and writes benchmarks/results/split-cifar-<tag>.{md,csv}: accuracy mean (min-max)
over seeds and total wall-clock per strategy and N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import optuna

import optuna_deelbo as od
from optuna_deelbo.tuning import compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord, result_row, write_csv


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main() -> None:
    record = RunRecord.start()  # the code that runs, even if HEAD moves during a long run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--n", type=_ints, default=[50, 500, 5000])
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--strategies", default="deelbo,grid,tpe")
    parser.add_argument("--backbone", default="cifar-resnet20")
    parser.add_argument("--prior", default="l2-sp")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pretrain-steps", type=int, default=5000)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--storage", default="sqlite:///bench-split-cifar.db")
    parser.add_argument("--tag", default=None, help="results file suffix (default: the device type)")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = od.train.resolve_device(args.device)
    storage = od.open_storage(args.storage)
    records: list[dict[str, object]] = []
    pretrain_total = 0.0
    for seed in args.seeds:
        for n in args.n:
            task, pretrain_s = od.split_cifar_task(
                n,
                data_dir=args.data_dir,
                backbone=args.backbone,
                seed=seed,
                prior=args.prior,
                steps=args.steps,
                batch_size=args.batch_size,
                pretrain_steps=args.pretrain_steps,
                cache_dir=args.cache_dir,
                device=str(device),
            )
            pretrain_total += pretrain_s
            for r in compare(task, args.strategies.split(","), storage, if_exists="overwrite"):
                records.append(result_row(r, N=n, seed=seed))
                print(
                    f"N={n} seed={seed} {r.strategy}: {r.total_s:.1f} s, acc {100 * r.test_accuracy:.1f}%", flush=True
                )

    tag = args.tag or device.type
    out = RESULTS / f"split-cifar-{tag}"
    write_csv(out.with_suffix(".csv"), records)

    lines = [
        "| N | strategy | accuracy % mean (min-max) | total s mean | trials |",
        "|---|---|---|---|---|",
    ]
    for n in args.n:
        for strategy in args.strategies.split(","):
            rs = [r for r in records if r["N"] == n and r["strategy"] == strategy]
            accs = [100 * float(r["test_accuracy"]) for r in rs]  # type: ignore[arg-type]
            secs = [float(r["total_s"]) for r in rs]  # type: ignore[arg-type]
            lines.append(
                f"| {n} | {strategy} | {statistics.mean(accs):.1f} ({min(accs):.1f}-{max(accs):.1f}) | "
                f"{statistics.mean(secs):.1f} | {rs[0]['trials']} |"
            )
    table = "\n".join(lines)
    text = f"""# Split-CIFAR: DE-ELBo vs grid vs TPE (CIFAR-10 (JPEG))

{record.header(str(device))}
- backbone {args.backbone} pretrained on classes 0-4 ({args.pretrain_steps} steps, batch 128, SWAG collected;
  {pretrain_total:.0f} s in total, cached and not counted below), fine-tuned on classes 5-9, prior {args.prior},
  {args.steps} steps x batch {args.batch_size} per configuration; seeds {args.seeds}; test = 5,000 images

{table}
"""
    out.with_suffix(".md").write_text(text)
    print(table)
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
