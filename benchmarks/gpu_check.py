"""The one GPU run that fits a lent H100/H200 (under 8 minutes, data decode and pretraining included).

Usage:  python benchmarks/gpu_check.py            # on the GPU machine: writes benchmarks/results/gpu-check.{md,csv}
        python benchmarks/gpu_check.py --smoke    # the same code paths on the CPU at tiny size (< 1 minute)

1. Step time of MAP vs DE-ELBo (isotropic and PTYL prior) for cifar-resnet20, resnet18 and
   resnet50 at batch 128, bf16 autocast and channels_last (the CUDA defaults of ``TrainConfig``),
   without and with ``torch.compile``; the loop synchronises CUDA before it reads the clock.
   Ratios against the goals 1.03 (iso) and 1.08 (PTYL); peak GPU memory per row.
2. One Split-CIFAR comparison (cifar-resnet20, CIFAR-10 JPEG from ``--data-dir``): DE-ELBo with
   the default recipe vs grid search over the same learning rates, one seed, at ``--n`` (the
   largest N the budget allows), with each strategy's wall-clock and test accuracy.
3. One text comparison (issue 24): DE-ELBo vs grid on WordNet-4 with every weight of all-MiniLM-L6-v2
   fine-tuned (the CPU benchmark trains only the top 2 layers over the cached bottom), N = 400,
   200 steps x 32, 32 tokens, one seed, tested on the 2,000 fixed definitions. Estimated ~1.5 min
   on an H200 (29 runs of 200 steps of a 22.7 M-weight encoder); needs Debian's wordnet-base and the
   ``[text]`` extra. ``--parts`` drops parts when the lent time is short.
4. The DE-ELBo search in one run (issue 25, benchmarks/batched.py's rows): on the same Split-CIFAR task
   and on digits (N = 100, SmallCNN, 300 x 64), one DE-ELBo run (lr 0.03), the 4-learning-rate search one
   trial after another, and the same search as one batched model (``torch.func.vmap``); with the grid
   row of part 2, how much cheaper than grid the whole search is.

Everything is made on the machine from the JPEG archives and the package: no download. With
``--smoke`` the sizes shrink (batch 8, 2 timed steps, N = 50, 5 fine-tuning and pretraining
steps, 500 test images, cifar-resnet20 only, no ``torch.compile``: inductor alone needs
minutes on a CPU) and the files go to ``--out-dir`` (default a temporary folder), so a smoke run
never overwrites the measured results.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

import optuna_deelbo as od
from optuna_deelbo.tuning import compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord
from overhead import KINDS, time_steps

GOALS = {"deelbo-iso": 1.03, "deelbo-ptyl": 1.08}
#: The parts of the check, in the order they run (``--parts``).
PARTS = ("step-time", "split-cifar", "text", "batched")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the check uses; :meth:`smoke` shrinks them for a CPU."""

    backbones: tuple[str, ...] = ("cifar-resnet20", "resnet18", "resnet50")
    batch_size: int = 128
    steps: int = 20
    warmup: int = 5
    repeats: int = 3
    compile_modes: tuple[bool, ...] = (False, True)
    n_train: int = 5000
    finetune_steps: int = 500
    finetune_batch: int = 128
    pretrain_steps: int = 2000
    test_images: int = 5000
    text_n: int = 400
    text_steps: int = 200
    text_batch: int = 32
    text_length: int = 32
    text_test: int = 2000
    text_lrs: tuple[float, ...] | None = None  # None: the default 4 learning rates
    digits_steps: int = 300
    digits_pretrain_steps: int = 400

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            backbones=("cifar-resnet20",),
            batch_size=8,
            steps=2,
            warmup=1,
            repeats=1,
            compile_modes=(False,),
            n_train=50,
            finetune_steps=5,
            finetune_batch=16,
            pretrain_steps=5,
            test_images=500,
            text_n=8,
            text_steps=2,
            text_batch=4,
            text_length=12,
            text_test=40,
            text_lrs=(0.01,),  # 1 DE-ELBo + 6 grid runs of the 22.7 M-weight encoder: the CPU test's time
            digits_steps=5,
            digits_pretrain_steps=5,
        )


def _peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def step_time_rows(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """One row per (backbone, compile): median ms per step of each kind, ratios and peak memory."""
    rows = []
    for backbone in sizes.backbones:
        for compiled in sizes.compile_modes:
            args = argparse.Namespace(
                device=str(device),
                batch_size=sizes.batch_size,
                steps=sizes.steps,
                warmup=sizes.warmup,
                repeats=sizes.repeats,
                rank=10,
                channels_last=device.type == "cuda",
                compile=compiled,
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            times = time_steps(backbone, args)
            med = {kind: statistics.median(ts) for kind, ts in times.items()}
            row: dict[str, Any] = {"backbone": backbone, "compile": compiled}
            row |= {f"{kind}_ms": 1e3 * med[kind] for kind in KINDS}
            row |= {f"{kind}/map": med[kind] / med["map"] for kind in GOALS}
            row |= {"peak_mb": _peak_memory_mb(device), "wall_s": time.perf_counter() - start}
            rows.append(row)
            print(
                f"{backbone} compile={compiled}: map {row['map_ms']:.2f} ms, iso x{row['deelbo-iso/map']:.3f}, "
                f"ptyl x{row['deelbo-ptyl/map']:.3f}, peak {row['peak_mb']:.0f} MB",
                flush=True,
            )
    return rows


def split_cifar(sizes: Sizes, device: torch.device, args: argparse.Namespace) -> tuple[od.TaskSpec, float]:
    """The Split-CIFAR task at ``sizes.n_train`` (test subset of ``sizes.test_images``) and its pretraining s."""
    start = time.perf_counter()
    task, pretrain_s = od.split_cifar_task(
        sizes.n_train,
        data_dir=args.data_dir,
        steps=sizes.finetune_steps,
        batch_size=sizes.finetune_batch,
        pretrain_steps=sizes.pretrain_steps,
        cache_dir=args.cache_dir,
        device=str(device),
    )
    task = task.with_test_subset(sizes.test_images)
    print(f"Split-CIFAR N={sizes.n_train}: data + pretraining {time.perf_counter() - start:.0f} s", flush=True)
    return task, pretrain_s


def batched_rows(tasks: list[tuple[str, od.TaskSpec]]) -> list[dict[str, Any]]:
    """Per task: one DE-ELBo run, the search sequential, the search batched (total s, test accuracy, exactness)."""
    from batched import SINGLE_LR, exactness, run_search

    from optuna_deelbo.tuning.strategies import DEELBoStrategy

    rows = []
    for name, task in tasks:
        single = run_search(task, name, "single", DEELBoStrategy([SINGLE_LR], batched="off"))
        sequential = run_search(task, name, "sequential", DEELBoStrategy(batched="off"))
        batched = run_search(task, name, "batched", DEELBoStrategy(batched="on"))
        worst = max(  # relative: |seq - batched| / |seq| of the trial values (float32 rounding, amplified by training)
            (
                abs(e["value_seq"] - e["value_bat"]) / max(abs(e["value_seq"]), 1e-12)
                for e in exactness(sequential, batched)
                if e["value_seq"] is not None and e["value_bat"] is not None
            ),
            default=float("nan"),
        )
        for row in (single, sequential, batched):
            rows.append(
                {
                    "task": name,
                    "search": row.search,
                    "trials": len(row.trials),
                    "total_s": row.result.total_s,
                    "x_single": row.result.total_s / single.result.total_s,
                    "test_accuracy": row.result.test_accuracy,
                    "max_rel_value_diff": worst,
                }
            )
    return rows


def _deelbo_vs_grid(
    task: od.TaskSpec, prepare_s: float, learning_rates: tuple[float, ...] | None = None
) -> list[dict[str, Any]]:
    """One row per strategy of a DE-ELBo vs grid comparison in memory (``prepare_s``: data + pretraining)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    rows = []
    for r in compare(task, ["deelbo", "grid"], storage, if_exists="overwrite", learning_rates=learning_rates):
        rows.append(
            {
                "strategy": r.strategy,
                "n_train": task.n_train,
                "trials": r.n_trials,
                "total_s": r.total_s,
                "test_accuracy": r.test_accuracy,
                "test_nll": r.test_nll,
                "best_params": r.best_params,
                "pretrain_s": prepare_s,
            }
        )
        print(f"  {r.strategy}: {r.total_s:.1f} s, {100 * r.test_accuracy:.1f} %", flush=True)
    return rows


def text_rows(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """DE-ELBo vs grid search on WordNet-4, every weight of all-MiniLM-L6-v2 fine-tuned, one seed."""
    start = time.perf_counter()
    task, prepare_s = od.wordnet_task(
        sizes.text_n,
        n_test=sizes.text_test,
        steps=sizes.text_steps,
        batch_size=sizes.text_batch,
        max_length=sizes.text_length,
        trainable_layers=None,
        device=str(device),
    )
    print(f"WordNet-4 N={sizes.text_n}: data + encoder {time.perf_counter() - start:.0f} s", flush=True)
    return _deelbo_vs_grid(task, prepare_s, sizes.text_lrs)


def _device_line(device: torch.device) -> str:
    cuda = torch.version.cuda or "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    return f"{name}; torch {torch.__version__}, CUDA {cuda}"


def write_results(
    out: Path,
    record: RunRecord,
    device: torch.device,
    sizes: Sizes,
    steps: list[dict[str, Any]],
    cifar: list[dict[str, Any]],
    text: list[dict[str, Any]] | None = None,
    batched: list[dict[str, Any]] | None = None,
) -> None:
    """gpu-check.md (tables, goals, sizes) and gpu-check.csv (every row of every part run)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gpu-check.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        for part, rows in (
            ("step-time", steps),
            ("split-cifar", cifar),
            ("text", text or []),
            ("batched", batched or []),
        ):
            if rows:
                writer.writerow(["part", *rows[0]])
                writer.writerows([part, *row.values()] for row in rows)
    lines = [
        "# GPU check: DE-ELBo step-time overhead and one Split-CIFAR comparison",
        "",
        record.header(_device_line(device)),
        f"- sizes: {dataclasses.asdict(sizes)}",
        "",
        "| backbone | compile | MAP ms/step | iso ms/step | PTYL ms/step | iso / MAP (goal 1.03) | PTYL / MAP "
        "(goal 1.08) | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        iso, ptyl = r["deelbo-iso/map"], r["deelbo-ptyl/map"]
        lines.append(
            f"| {r['backbone']} | {r['compile']} | {r['map_ms']:.2f} | {r['deelbo-iso_ms']:.2f} | "
            f"{r['deelbo-ptyl_ms']:.2f} | {iso:.3f} {'met' if iso <= GOALS['deelbo-iso'] else 'NOT met'} | "
            f"{ptyl:.3f} {'met' if ptyl <= GOALS['deelbo-ptyl'] else 'NOT met'} | {r['peak_mb']:.0f} |"
        )
    for title, rows in (
        ("Split-CIFAR (cifar-resnet20)", cifar),
        ("WordNet-4 text (all-MiniLM-L6-v2, every weight)", text),
    ):
        if not rows:
            continue
        lines += ["", f"{title}:", "", "| strategy | N | trials | total s | test accuracy % | test NLL |"]
        lines.append("|---|---|---|---|---|---|")
        for r in rows:
            lines.append(
                f"| {r['strategy']} | {r['n_train']} | {r['trials']} | {r['total_s']:.1f} | "
                f"{100 * r['test_accuracy']:.1f} | {r['test_nll']:.3f} |"
            )
    if batched:
        grid = next((r["total_s"] for r in cifar if r["strategy"] == "grid"), None)
        lines += [
            "",
            "The DE-ELBo search in one run (issue 25; goal: batched <= 1.5x one run, >= 10x cheaper than grid):",
            "",
        ]
        lines += [
            "| task | search | trials | total s | x one run | grid / this | test accuracy % | max rel. value diff |"
        ]
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in batched:
            cheaper = f"{grid / r['total_s']:.1f}" if grid is not None and r["task"] == "split-cifar" else "-"
            lines.append(
                f"| {r['task']} | {r['search']} | {r['trials']} | {r['total_s']:.1f} | {r['x_single']:.2f} | "
                f"{cheaper} | {100 * r['test_accuracy']:.1f} | {r['max_rel_value_diff']:.2g} |"
            )
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu-check.md'}")


def main(argv: list[str] | None = None) -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; files to --out-dir")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--n", type=int, default=None, help="Split-CIFAR N (default 5000; smoke 50)")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results (smoke: a temporary folder)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma list from {','.join(PARTS)} (default: all; drop some when the lent time is short)",
    )
    args = parser.parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes()
    if args.n is not None:
        if args.n <= 0:
            parser.error(f"--n must be a positive integer, got {args.n}")
        sizes = dataclasses.replace(sizes, n_train=args.n)
    device = od.train.resolve_device(args.device or ("cpu" if args.smoke else "cuda"))
    if args.smoke:
        torch.set_num_threads(1)
    out = Path(args.out_dir) if args.out_dir else (Path(tempfile.mkdtemp()) if args.smoke else RESULTS)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: unknown {unknown or parts}; choose from {','.join(PARTS)}")
    steps = step_time_rows(sizes, device) if "step-time" in parts else []
    cifar_task = split_cifar(sizes, device, args) if {"split-cifar", "batched"} & set(parts) else None
    cifar = _deelbo_vs_grid(*cifar_task) if cifar_task is not None and "split-cifar" in parts else []
    text = text_rows(sizes, device) if "text" in parts else []
    batched: list[dict[str, Any]] = []
    if cifar_task is not None and "batched" in parts:
        digits, _ = od.digits_task(
            100, steps=sizes.digits_steps, pretrain_steps=sizes.digits_pretrain_steps, device=str(device)
        )
        batched = batched_rows([("split-cifar", cifar_task[0]), ("digits", digits)])
    write_results(out, record, device, sizes, steps, cifar, text, batched)


if __name__ == "__main__":
    main()
