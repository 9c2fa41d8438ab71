"""Regenerate every table and figure in benchmarks/results/ with one command.

Usage:  python benchmarks/regenerate.py                      (CPU: embedded digits task, Split-CIFAR at small N)
        python benchmarks/regenerate.py --device cuda        (GPU: the paper's N values and budgets)
        python benchmarks/regenerate.py --only paper-digits,dashboard
        python benchmarks/regenerate.py --list               (the steps, their commands and outputs; runs nothing)

Runs the benchmark scripts one after another (never in parallel: they time themselves), each
as its own process with ``OPTUNA_DEELBO_REGENERATE`` set, so every results file names both its
own exact command and this one. Storages go to benchmarks/results/*.db (git-ignored); reruns
reuse the finished studies there where a script supports it (paper.py). Split-CIFAR reads the
CIFAR-10 JPEG archives from ``--data-dir`` (default ../shared/data). Stops at the first step that
fails (``--keep-going`` runs the rest) and prints each step's wall-clock.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import REGENERATE_ENV, REGENERATE_STEP_ENV, RESULTS

#: benchmarks/, where the scripts are.
HERE = Path(__file__).resolve().parent

__all__ = ["STEPS", "Step", "commands", "main", "orphan_results", "step_writing", "uncovered_scripts"]

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Step:
    """One benchmark script run: its name, arguments per device and the results files it writes.

    ``args`` maps a device (``cpu``/``cuda``) to the script's arguments; ``{results}``,
    ``{device}`` and ``{data_dir}`` in them are filled in by :func:`commands`. ``outputs`` are
    file names under benchmarks/results/ (``{device}`` filled in too).
    """

    name: str
    script: str
    args: dict[str, tuple[str, ...]]
    outputs: tuple[str, ...]


#: paper-digits' storage, which the dashboard screenshot opens when it exists or is about to.
PAPER_DIGITS_DB = "paper-digits-{device}.db"
#: The dashboard's storage otherwise (dashboard_screenshot.py makes a small compare run into it).
DASHBOARD_DB = "dashboard.db"

#: paper.py on a CPU: one intra-op thread (small models on a small shared CPU run faster so, and every
#: strategy gets the same); on a GPU torch's default.
CPU_THREADS: dict[str, tuple[str, ...]] = {"cpu": ("--threads", "1"), "cuda": ()}

_SPLIT_CPU = (  # N = 5000 is left to the GPU run: on 2 CPU cores it cost as much as the two smaller N together
    "--n",
    "50,500",
    "--seeds",
    "0,1,2",
    "--steps",
    "200",  # 100 x 32 under-trained N = 500 for every strategy (ablation: steps-x2 +6.1 for DE-ELBo)
    "--batch-size",
    "32",
    "--pretrain-steps",
    "500",
)

#: Every benchmark, in the order it runs. The dashboard screenshot reads paper-digits' storage.
STEPS: tuple[Step, ...] = (
    Step(
        "compare-digits",
        "compare_digits.py",
        {d: ("--storage", "sqlite:///{results}/compare-digits-{device}.db") for d in DEVICES},
        ("compare-digits.md", "compare-digits.csv"),
    ),
    Step(
        "batched",
        "batched.py",
        {
            "cpu": ("--device", "cpu", "--threads", "1", "--data-dir", "{data_dir}"),
            "cuda": ("--device", "cuda", "--data-dir", "{data_dir}"),
        },
        ("batched-{device}.md", "batched-{device}.csv"),
    ),
    Step(
        "batched-sensitivity",
        "batched_sensitivity.py",
        {d: ("--device", d, "--threads", "1", "--data-dir", "{data_dir}") for d in DEVICES},
        ("batched-sensitivity.md",),
    ),
    Step("storage-ladder", "storage_ladder.py", {d: () for d in DEVICES}, ("storage-ladder.md",)),
    Step(
        "overhead",
        "overhead.py",
        {
            "cpu": (
                *("--device", "cpu", "--threads", "1", "--repeats", "9", "--data-dir", "{data_dir}"),
                *("--trial-tasks", "split-cifar,wordnet"),
            ),
            "cuda": (
                *("--device", "cuda", "--batch-size", "128", "--steps", "30", "--repeats", "5"),
                *("--data-dir", "{data_dir}", "--trial-tasks", "split-cifar,wordnet"),
            ),
        },
        ("overhead-{device}.md",),
    ),
    Step(
        "split-cifar",
        "split_cifar.py",
        {
            d: (
                *(_SPLIT_CPU if d == "cpu" else ()),
                *("--device", d, "--data-dir", "{data_dir}"),
                *("--storage", "sqlite:///{results}/split-cifar-{device}.db"),
            )
            for d in DEVICES
        },
        ("split-cifar-{device}.md", "split-cifar-{device}.csv"),
    ),
    Step(
        "paper-digits",
        "paper.py",
        {d: ("--task", "digits", "--device", d, *CPU_THREADS[d]) for d in DEVICES},
        tuple(
            f"paper-digits-{{device}}{s}"
            for s in (".md", ".csv", "-figure2.csv", "-figure2.html", "-figure2.png", "-report.html")
        ),
    ),
    Step(
        "paper-split-cifar",
        "paper.py",
        {d: ("--task", "split-cifar", "--device", d, "--data-dir", "{data_dir}", *CPU_THREADS[d]) for d in DEVICES},
        tuple(
            f"paper-split-cifar-{{device}}{s}"
            for s in (".md", ".csv", "-figure2.csv", "-figure2.html", "-figure2.png", "-report.html")
        ),
    ),
    Step(
        "dashboard",
        "dashboard_screenshot.py",
        {
            d: ("--storage", "sqlite:///{results}/" + PAPER_DIGITS_DB, "--study", "digits-N50-seed0/l2-sp/deelbo")
            for d in DEVICES
        },
        ("dashboard.md", "dashboard.png", "dashboard-trial.png"),
    ),
    Step(
        "schedules-vs-fixed",
        "schedules_vs_fixed.py",
        {d: ("--storage", "sqlite:///{results}/schedules-vs-fixed.db") for d in DEVICES},
        ("schedules-vs-fixed.md", "schedules-vs-fixed.csv"),
    ),
    Step(
        "own-loop-selection",
        "own_loop_selection.py",
        {d: () for d in DEVICES},
        ("own-loop-selection.md", "own-loop-selection.csv"),
    ),
    Step(
        "own-loop-selection-running",
        "own_loop_selection.py",
        {d: ("--batchnorm", "running") for d in DEVICES},
        ("own-loop-selection-running.md", "own-loop-selection-running.csv"),
    ),
    Step("memorisation", "memorisation.py", {d: () for d in DEVICES}, ("memorisation.md", "memorisation.csv")),
    # the host libraries' tests come from checkouts: $OPTUNA_DEELBO_LIGHTNING_REPO, $OPTUNA_DEELBO_TRANSFORMERS_TESTS
    # (and $OPTUNA_DEELBO_TRANSFORMERS_NOTE: how its files were obtained, said in the results)
    Step("host-suites", "host_suites.py", {d: () for d in DEVICES}, ("host-suites.md",)),
    Step(  # CPU settings on both devices: its cells are the paper benchmark's CPU table
        "search-cost",
        "search_cost.py",
        {d: ("--threads", "1", "--data-dir", "{data_dir}") for d in DEVICES},
        ("search-cost-cpu.md", "search-cost-cpu.csv", "search-cost-cpu.html", "search-cost-cpu.png"),
    ),
    Step(  # after search-cost: it reads search-cost-cpu.csv for the sequential search and the baselines
        "halving",
        "halving.py",
        {d: ("--threads", "1", "--data-dir", "{data_dir}") for d in DEVICES},
        ("halving-cpu.md", "halving-cpu.csv", "halving-cpu.html", "halving-cpu.png"),
    ),
    Step("reliability", "reliability.py", {d: () for d in DEVICES}, ("reliability.md", "reliability.csv")),
    Step(
        "heldout-digits",  # a training-set size and seed no other benchmark uses
        "compare_digits.py",
        {
            d: (
                *("--n-train", "150", "--seed", "7", "--strategies", "deelbo,grid,tpe"),
                *("--out", "{results}/heldout-digits-N150-seed7"),
                *("--storage", "sqlite:///{results}/heldout-digits-{device}.db"),
            )
            for d in DEVICES
        },
        ("heldout-digits-N150-seed7.md", "heldout-digits-N150-seed7.csv"),
    ),
    Step(  # on a CPU only the smoke run (into a temporary folder): the measured file comes from a GPU
        "gpu-check",
        "gpu_check.py",
        {"cpu": ("--smoke", "--data-dir", "{data_dir}"), "cuda": ("--data-dir", "{data_dir}")},
        ("gpu-check.md", "gpu-check.csv"),
    ),
    Step(  # reads back every ablation-runs*.csv: the recorded table came from three shards (-a, -b, -c) of this step
        "ablation",
        "ablation.py",
        {d: ("--data-dir", "{data_dir}") for d in DEVICES},
        ("ablation.md", "ablation.csv", "ablation-per-lr.csv", "ablation-runs*.csv"),
    ),
    Step(
        "compare-digits-ptyl",
        "compare_digits.py",
        {
            d: (
                *("--prior", "ptyl", "--strategies", "deelbo,grid,tpe"),
                *("--storage", "sqlite:///{results}/compare-digits-ptyl.db", "--out", "{results}/compare-digits-ptyl"),
            )
            for d in DEVICES
        },
        ("compare-digits-ptyl.md", "compare-digits-ptyl.csv"),
    ),
    *(
        Step(  # the paper protocol at one N each (the README's Split-CIFAR rows at 200 steps x 32)
            f"paper-split-cifar-n{n}",
            "paper.py",
            {
                d: (
                    *("--task", "split-cifar", "--device", d, "--n", str(n), *CPU_THREADS[d]),
                    *("--data-dir", "{data_dir}", "--tag", f"{{device}}-n{n}"),
                    *("--storage", f"sqlite:///{{results}}/paper-split-cifar-{{device}}-n{n}.db"),
                )
                for d in DEVICES
            },
            tuple(
                f"paper-split-cifar-{{device}}-n{n}{s}"
                for s in (".md", ".csv", "-figure2.csv", "-figure2.html", "-figure2.png", "-report.html")
            ),
        )
        for n in (50, 500)
    ),
    *(
        Step(  # the text row (issue 24): WordNet-4, all-MiniLM-L6-v2's top 2 layers, one N per run
            f"paper-wordnet-n{n}",
            "paper.py",
            {
                d: (
                    *("--task", "wordnet", "--device", d, "--n", str(n), *CPU_THREADS[d]),
                    *("--tag", f"{{device}}-n{n}"),
                    *("--storage", f"sqlite:///{{results}}/paper-wordnet-{{device}}-n{n}.db"),
                )
                for d in DEVICES
            },
            tuple(
                f"paper-wordnet-{{device}}-n{n}{s}"
                for s in (".md", ".csv", "-figure2.csv", "-figure2.html", "-figure2.png", "-report.html")
            ),
        )
        for n in (40, 400)
    ),
    *(
        Step(
            f"lora-n{n}",
            "lora.py",
            {d: ("--n", str(n), *CPU_THREADS["cpu"]) for d in DEVICES},  # a CPU benchmark (its cells' settings)
            (f"lora-cpu-n{n}.md", f"lora-cpu-n{n}.csv"),
        )
        for n in (40, 400)
    ),
    *(
        Step(  # N = 500 at 100 steps x 32, the first Split-CIFAR row, in two runs (seeds 0-1, seed 2)
            f"split-cifar-n500-{tag}",
            "split_cifar.py",
            {
                d: (
                    *(
                        "--n",
                        "500",
                        "--seeds",
                        seeds,
                        "--steps",
                        "100",
                        "--batch-size",
                        "32",
                        "--pretrain-steps",
                        "500",
                    ),
                    *("--device", d, "--data-dir", "{data_dir}", "--tag", f"{{device}}-n500-{tag}"),
                    *("--storage", f"sqlite:///{{results}}/split-cifar-{{device}}-n500-{tag}.db"),
                )
                for d in DEVICES
            },
            (f"split-cifar-{{device}}-n500-{tag}.md", f"split-cifar-{{device}}-n500-{tag}.csv"),
        )
        for tag, seeds in (("seeds01", "0,1"), ("seed2", "2"))
    ),
)

#: Scripts under benchmarks/ that are helpers, not benchmarks.
NOT_BENCHMARKS = frozenset({"_record.py", "regenerate.py"})


def uncovered_scripts(folder: Path = HERE) -> list[str]:
    """Benchmark scripts in ``folder`` that no step runs (each new benchmark must be added to :data:`STEPS`)."""
    covered = {s.script for s in STEPS}
    return sorted(p.name for p in folder.glob("*.py") if p.name not in NOT_BENCHMARKS | covered)


def step_writing(file_name: str) -> str | None:
    """The name of the step whose outputs include ``file_name`` (a file in benchmarks/results/), or ``None``."""
    for step in STEPS:
        for device in DEVICES:
            if any(fnmatch.fnmatchcase(file_name, o.format(device=device)) for o in step.outputs):
                return step.name
    return None


def orphan_results(folder: Path = RESULTS) -> list[str]:
    """Results files no step writes (storages ``*.db`` aside): each must come from a regenerate step."""
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".db" and step_writing(p.name) is None
    )


def commands(device: str, only: list[str] | None = None, data_dir: str | None = None) -> list[tuple[Step, list[str]]]:
    """The steps to run for ``device`` (all, or those named in ``only``, in :data:`STEPS` order) and their argv.

    Raises:
        ValueError: an unknown device or step name.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    names = [s.name for s in STEPS]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose from {names}")
    fill = {
        "results": str(RESULTS),
        "device": device,
        "data_dir": data_dir or str(HERE.parents[1] / "shared" / "data"),
    }
    plan = [step for step in STEPS if not only or step.name in only]
    paper_digits = any(s.name == "paper-digits" for s in plan) or (RESULTS / PAPER_DIGITS_DB.format(**fill)).exists()
    out = []
    for step in plan:
        args = step.args[device]
        if step.name == "dashboard" and not paper_digits:  # never put a small run into paper-digits' storage
            args = ("--storage", "sqlite:///{results}/" + DASHBOARD_DB)
        out.append((step, [sys.executable, str(HERE / step.script), *(a.format(**fill) for a in args)]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: cuda when torch sees a GPU")
    parser.add_argument("--only", default=None, help="comma-separated step names (see --list)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 JPEG archives (default ../shared/data)")
    parser.add_argument("--list", action="store_true", help="print the steps and their commands; run nothing")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining steps after a failure")
    args = parser.parse_args(argv)

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        plan = commands(device, only, args.data_dir)
    except ValueError as exc:
        parser.error(str(exc))
    missing = uncovered_scripts()
    if missing:
        print(f"warning: no step runs {missing}; add them to STEPS in {Path(__file__).name}", file=sys.stderr)
    if args.list:
        for step, argv_ in plan:
            outputs = ", ".join(o.format(device=device) for o in step.outputs)  # (patterns: fnmatch)
            print(f"{step.name}: {shlex.join(argv_)}\n    -> benchmarks/results/{{{outputs}}}")
        return 0

    env = dict(os.environ, **{REGENERATE_ENV: "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])])})
    failed: list[str] = []
    timings: list[str] = []
    for step, argv_ in plan:
        print(f"== {step.name}: {shlex.join(argv_)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(argv_, env={**env, REGENERATE_STEP_ENV: step.name}, check=False).returncode
        timings.append(f"{step.name}: {time.perf_counter() - start:.0f} s" + ("" if rc == 0 else f" (exit {rc})"))
        if rc != 0:
            failed.append(step.name)
            if not args.keep_going:
                break
    print("\n".join(["== wall-clock per step", *timings]))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
