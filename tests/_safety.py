"""Data-safety scenarios shared by the tests and benchmarks/reliability.py (like tests/_postgres.py).

* :func:`interrupt_cli`: run ``optuna-deelbo`` in a child process and signal it mid-trial;
* :func:`snapshot`: what an interrupted-then-resumed storage must share with an uninterrupted one;
* :data:`BAD_VALUES`, :func:`value_options`, :func:`run_cli`: the CLI fuzz's values, options and runner;
* :func:`wait_all`: wait for worker processes, each must exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

import optuna_deelbo as od
from optuna_deelbo.cli import build_parser, main

__all__ = ["BAD_VALUES", "EXTREME_VALUES", "interrupt_cli", "run_cli", "snapshot", "value_options", "wait_all"]

#: Values that are wrong for most options: signs, zero, huge, NaN / inf, not numbers, empty,
#: unicode, control characters, paths that do not exist or cannot be written.
BAD_VALUES = [
    "-1",
    "0",
    "-0",
    "1.5",
    "1e308",
    "99999999999999999999",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "",
    " ",
    "abc",
    "ü",
    "☃ snow",
    "0x10",
    "--",
    "\t",
    "/nonexistent/dir/file",
    "/proc/forbidden/file.html",
    "sqlite:////nonexistent/dir/x.db",
    "postgresql+psycopg://nobody@127.0.0.1:1/none",
    "cuda:7",
    "9223372036854775808",  # 2**63
    "-0.0",
    "1e-320",
    "9" * 10_000,
]

#: Issue 31's sweep: the values every numeric option (and every other) must end in one line on.
EXTREME_VALUES = ["1e308", str(2**63), "-0.0", "nan", "inf", "9" * 10_000]


def value_options(command: str) -> list[str]:
    """The options of ``optuna-deelbo <command>`` that take a value (flags take none)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = sub.choices[command]._actions
    return [a.option_strings[-1] for a in actions if a.option_strings and a.dest != "help" and a.nargs != 0]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``optuna-deelbo argv`` in this process: exit status and everything written to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def snapshot(url: str) -> dict[str, object]:
    """Per study: its finished trials (params, state, value, learned lambda), trial count, accuracy, best params."""
    storage = od.open_storage(url)
    out: dict[str, object] = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        finished = sorted(
            (sorted(t.params.items()), t.state.name, t.value, t.user_attrs.get("learned:lambda"))
            for t in study.trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        )
        result = od.tuning.StrategyResult.from_study(study)
        out[summary.study_name] = (finished, result.n_trials, result.test_accuracy, result.best_params)
    return out


def interrupt_cli(args: list[str], url: str, study: str, sig: int, after: int) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process; once ``study`` has ``after`` finished trials and one running, signal it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "optuna_deelbo.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # A shell's background job ignores SIGINT, and a Python started with it ignored keeps ignoring it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        try:
            trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
        except Exception:  # not created yet, or the file is being written
            time.sleep(0.05)
            continue
        if sum(t.state.is_finished() for t in trials) >= after and any(t.state == TrialState.RUNNING for t in trials):
            child.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = child.communicate(timeout=240)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def wait_all(procs: Sequence[subprocess.Popen[str]], timeout_s: float) -> list[str]:
    """Each process's output once it has exited 0, within ``timeout_s`` in all.

    Past it, every process still running gets SIGABRT (one started with ``PYTHONFAULTHANDLER=1`` first
    prints where each of its threads is), then is killed; the failure shows each process's last output.
    """
    deadline = time.monotonic() + timeout_s
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ran past {timeout_s:g} s:\n" + _stop_all(procs)) from None
        assert proc.returncode == 0, out[-3000:]
        outputs.append(out)
    return outputs


def _stop_all(procs: Sequence[subprocess.Popen[str]]) -> str:
    """Abort, then kill, every process still running; the last 4,000 characters each printed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
    tails = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        tails.append(f"--- pid {proc.pid} (exit {proc.returncode}):\n{(out or '')[-4000:]}")
    return "\n".join(tails)
