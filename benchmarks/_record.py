"""What every results file states: machine, date, commit, the exact command and the CPU load.

Each benchmark calls :meth:`RunRecord.start` first thing (so the commit is the code that runs,
even if HEAD moves during a long run) and puts :meth:`RunRecord.header` at the top of its
markdown file. The load averages (``os.getloadavg``: 1, 5 and 15 minutes) are read at the
start and when the header is written: the project's machines are shared, and a load above the
core count means other jobs competed for the CPU, which inflates wall-clock numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

__all__ = ["RESULTS", "RunRecord", "commit", "machine", "repo_relative", "result_row", "step_line", "write_csv"]

#: benchmarks/results/, where every table and figure goes.
RESULTS = Path(__file__).resolve().parent / "results"

#: The checkout the benchmark runs from (a worktree's own root when run from one).
REPO = RESULTS.parents[1]

#: Set by benchmarks/regenerate.py so each results file also names the one command that made it.
REGENERATE_ENV = "OPTUNA_DEELBO_REGENERATE"
#: Set by benchmarks/regenerate.py to the step's name, which every results file names.
REGENERATE_STEP_ENV = "OPTUNA_DEELBO_REGENERATE_STEP"


def repo_relative(text: str) -> str:
    """``text`` with this checkout's absolute paths made repository-relative (``benchmarks/x.py``,
    ``sqlite:///benchmarks/results/x.db``) and paths beside it relative to it (``../shared/data``).

    A record names the commands and storages as a reader types them in a clone, not the machine's folders.
    """
    return text.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")


def machine() -> str:
    """CPU model, core count, accelerator and library versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU run)"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, optuna {optuna.__version__}, torch threads {torch.get_num_threads()}"
    )


def commit() -> str:
    """The checked-out commit, flagged when tracked files differ from it (call it when the run starts).

    benchmarks/results/ is left out of the check: it holds what the runs write, and a run of
    regenerate.py rewrites it step after step.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=RESULTS
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)benchmarks/results"],
            capture_output=True,
            text=True,
            check=True,
            cwd=RESULTS,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unavailable"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _utc(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class RunRecord:
    """Provenance of one benchmark run, taken when it starts."""

    revision: str
    command: str
    started: dt.datetime
    load_start: str
    parent: str | None = field(default=None)
    step: str | None = field(default=None)

    @classmethod
    def start(cls) -> RunRecord:
        """Record the commit, the command line, the time and the load average now."""
        return cls(
            revision=commit(),
            command=repo_relative("python " + shlex.join(sys.argv)),
            started=dt.datetime.now(dt.timezone.utc),
            load_start=_load(),
            parent=repo_relative(os.environ[REGENERATE_ENV]) if os.environ.get(REGENERATE_ENV) else None,
            step=os.environ.get(REGENERATE_STEP_ENV),
        )

    def header(self, device: str | None = None) -> str:
        """Markdown bullet lines: machine, device, date, commit, command, load averages (start / end)."""
        lines = [f"- machine: {machine()}"]
        if device is not None:
            lines.append(f"- device: {device}")
        ended = dt.datetime.now(dt.timezone.utc)
        lines += [
            f"- date: {_utc(self.started)} to {_utc(ended)}; commit: {self.revision}",
            f"- command: `{self.command}`" + (f" (run by `{self.parent}`)" if self.parent else ""),
            step_line(self.step),
            f"- load average (1 / 5 / 15 min) at start {self.load_start}, at end {_load()}, on {os.cpu_count()} cores:"
            " other jobs share this machine, so wall-clock numbers can be inflated when the load exceeds the cores",
        ]
        return "\n".join(lines)


def step_line(step: str | None) -> str:
    """The header line naming the regenerate step that writes a results file (tests/test_regenerate.py checks it)."""
    if step is None:
        return (
            "- regenerate step: none (an ad-hoc run: rerun it through `python benchmarks/regenerate.py --only <step>`)"
        )
    return f"- regenerate step: `{step}` (`python benchmarks/regenerate.py --only {step}`)"


def write_csv(path: Path | str, rows: Sequence[Mapping[str, Any]], *, ignore: Sequence[str] = ()) -> Path:
    """Write ``rows`` (one dict each, the first one's keys as the header, minus ``ignore``) to ``path``; returns it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k not in ignore], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def result_row(result: Any, **leading: Any) -> dict[str, Any]:
    """One CSV row of a :class:`~optuna_deelbo.tuning.StrategyResult` after the ``leading`` columns (N, seed, ...)."""
    return {
        **leading,
        "strategy": result.strategy,
        "trials": result.n_trials,
        "total_s": result.total_s,
        "test_accuracy": result.test_accuracy,
        "test_nll": result.test_nll,
        "best_params": result.best_params,
        "learned": result.learned,
    }
