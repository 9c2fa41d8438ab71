"""Workers vs throughput on one PostgreSQL study, and the faults a study survives.

Usage: python benchmarks/reliability.py [--workers 1,2,4,8] [--n-train 100] [--steps 150] [--storage URL]

Writes benchmarks/results/reliability.{md,csv}. Without ``--storage`` a throw-away PostgreSQL
server is started from Debian's binaries (tests/_postgres.py). Three parts:

1. Throughput: for each worker count W, the grid strategy's 24 trials of the embedded digits
   task are planned into a fresh study (``compare --plan-only``) and W real
   ``optuna-deelbo worker`` processes (one torch thread each) work it off. ``busy`` is first
   trial start to last trial end (the workers' start-up - imports, source pretraining - is
   outside it); ``wall`` is from launching the workers until the last has exited.
2. SIGKILL mid-trial: one worker is killed once its trial has written a checkpoint; two fresh
   workers finish the study; the killed trial's retry must resume from its checkpoint step.
3. Numerical faults in one study (in this process): a NaN/inf loss (lr = 1e30), an exploding
   posterior std (DE-ELBo, ``max_sigma`` = 1, lr = 1) and a runaway NLL (MAP, lr = 1e4) each
   end their trial as pruned with ``failure:reason``, and the study goes on to a normal trial.
4. Data safety (``--parts safety`` runs only this and rewrites only its section of the .md;
   ``--parts workers`` runs 1-3 and keeps it):
   a name clash with a user's study, a compare interrupted by SIGINT mid-trial and resumed
   against an uninterrupted one, 4 workers through a 10 s PostgreSQL restart, and every CLI
   option given each of tests/_safety.py's bad values.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

import optuna_deelbo as od
from optuna_deelbo.task import BuiltinTask
from optuna_deelbo.train import DivergenceRule
from optuna_deelbo.tuning import DEELBoSampler
from optuna_deelbo.tuning.attrs import CHECKPOINT_STEP, RESUMED_STEP
from optuna_deelbo.tuning.strategies import LEARNING_RATES, WEIGHT_DECAYS, get_strategy
from optuna_deelbo.tuning.workers import plan_strategy_study, queue_progress, search_seconds

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _postgres import PostgresServer, find_bin_dir, postgres_server  # noqa: E402
from _record import RESULTS, RunRecord, write_csv  # noqa: E402
from _safety import BAD_VALUES, interrupt_cli, run_cli, snapshot, value_options  # noqa: E402

__all__ = ["main"]


def _worker(url: str, study: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "optuna_deelbo.cli", "worker", "--storage", url, "--study", study]
    argv += ["--device", "cpu", "--threads", "1", *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.wait(timeout=900) != 0:
            raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}")


def throughput(url: str, recipe: BuiltinTask, task: od.TaskSpec, counts: list[int]) -> list[dict[str, float]]:
    """Plan the grid study afresh for each worker count and time W workers on it."""
    storage = od.open_storage(url)
    rows: list[dict[str, float]] = []
    for n in counts:
        name = f"reliability/grid/w{n}"
        plan_strategy_study(get_strategy("grid"), recipe, storage, name, task=task, if_exists="overwrite")
        start = time.perf_counter()
        _wait([_worker(url, name) for _ in range(n)])
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name=name, storage=storage)
        progress = queue_progress(study)
        assert progress.done and progress.complete == progress.planned, progress
        busy = search_seconds(study)
        rows.append(
            {
                "workers": n,
                "trials": progress.complete,
                "busy_s": busy,
                "wall_s": wall,
                "trials_per_min_busy": 60 * progress.complete / busy,
                "trials_per_min_wall": 60 * progress.complete / wall,
            }
        )
        print(rows[-1], flush=True)
    return rows


def sigkill(url: str, recipe: BuiltinTask, task: od.TaskSpec) -> dict[str, object]:
    """Kill a worker mid-trial, let two fresh ones finish, report the retry."""
    storage = od.open_storage(url)
    name = "reliability/deelbo/sigkill"
    plan_strategy_study(get_strategy("deelbo"), recipe, storage, name, task=task, if_exists="overwrite")
    beats = ["--heartbeat-interval", "1", "--grace-period", "3"]
    doomed = _worker(url, name, *beats)
    victim = None
    while victim is None:
        running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        victim = next((t for t in running if t.user_attrs.get(CHECKPOINT_STEP, 0) > 0), None)
        if doomed.poll() is not None:
            raise RuntimeError("the worker ended before any trial checkpointed")
        time.sleep(0.05)
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.time()
    doomed.wait()
    _wait([_worker(url, name, *beats) for _ in range(2)])
    study = optuna.load_study(study_name=name, storage=storage)
    killed = study.trials[victim.number]
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.datetime_start is not None and killed.datetime_complete is not None
    progress = queue_progress(study)
    return {
        "killed_trial": killed.number,
        "killed_state": killed.state.name,
        "checkpoint_step": killed.user_attrs[CHECKPOINT_STEP],
        "steps": recipe.steps,
        "retry_trial": retry.number,
        "retry_state": retry.state.name,
        "resumed_from_step": retry.user_attrs[RESUMED_STEP],
        "kill_to_fail_s": killed.datetime_complete.timestamp() - killed_at,
        "kill_to_retry_start_s": retry.datetime_start.timestamp() - killed_at,
        "complete": f"{progress.complete} / {progress.planned} planned ({progress.retried} retried, "
        f"{progress.failed} failed for good)",
    }


def numerical_faults(task: od.TaskSpec) -> list[tuple[str, str, str]]:
    """Three diverging trials and a normal one: ``(trial, state, failure:reason)``.

    The DE-ELBo cases share one study (the MAP case needs a plain sampler: its own study).
    """
    cases = [
        ("DE-ELBo, lr = 1e30 (NaN/inf loss)", {"lr": 1e30}, True, {}),
        (
            "DE-ELBo, init sigma 1 > max_sigma 0.5 (exploding sigma)",
            {"lr": 1e-4},
            True,
            {"init_sigma": 1.0, "divergence": DivergenceRule(max_sigma=0.5)},
        ),
        ("MAP, lr = 1e4 (runaway NLL)", {"lr": 1e4, "weight_decay": 1e-4}, False, {}),
        ("DE-ELBo, lr = 0.1 (normal)", {"lr": 0.1}, True, {}),
    ]
    rows = []
    sampler = DEELBoSampler(optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(sampler=sampler)  # one study: it goes on after each diverged trial
    map_study = optuna.create_study()
    for label, params, deelbo, changes in cases:
        target = study if deelbo else map_study
        target.enqueue_trial(params)
        run_task = dataclasses.replace(task, **changes)

        def objective(trial: optuna.Trial, run_task: od.TaskSpec = run_task) -> float:
            lr = trial.suggest_float("lr", 1e-4, 1e31, log=True)
            return od.fit(
                trial, run_task, lr=lr, weight_decay=trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
            )

        target.optimize(objective, n_trials=1)
        trial = target.trials[-1]
        rows.append((label, trial.state.name, str(trial.user_attrs.get("failure:reason", "-"))))
        print(rows[-1], flush=True)
    return rows


@contextlib.contextmanager
def _server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found (apt-get install postgresql) and no --storage given")
    with postgres_server(bin_dir) as server:
        yield server


@contextlib.contextmanager
def _storage_url(given: str | None) -> Iterator[str]:
    if given is not None:
        yield given
        return
    with _server() as server:
        yield server.url


SAFETY_COMPARE = ["compare", "--n-train", "50", "--steps", "60", "--pretrain-steps", "60", "--tpe-trials", "8"]
SAFETY_COMPARE += ["--strategies", "deelbo,grid,tpe", "--report", "", "--no-progress", "--device", "cpu"]
GRID_STUDY = "digits-N50-seed0/l2-sp/grid"


def name_clash(tmp: Path) -> dict[str, object]:
    """``compare`` on a storage that holds a user's study of the same name as one of ours."""
    url = f"sqlite:///{tmp / 'clash.db'}"
    user = optuna.create_study(storage=url, study_name=GRID_STUDY)
    user.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 1.0}, distributions={"x": _x()}))
    code, err = run_cli([*SAFETY_COMPARE, "--storage", url])
    after = optuna.load_study(study_name=GRID_STUDY, storage=url).trials
    return {
        "exit": code,
        "message": err.strip().splitlines()[-1],
        "user_trials_kept": len(after) == 1 and after[0].params == {"x": 1.0},
        "studies_after": len(optuna.get_all_study_names(url)),
    }


def _x() -> optuna.distributions.FloatDistribution:
    return optuna.distributions.FloatDistribution(0.0, 2.0)


def interrupted_and_resumed(tmp: Path) -> dict[str, object]:
    """SIGINT mid-trial during the grid search, then ``--resume``, against an uninterrupted run."""
    reference, url = f"sqlite:///{tmp / 'reference.db'}", f"sqlite:///{tmp / 'interrupted.db'}"
    assert run_cli([*SAFETY_COMPARE, "--storage", reference])[0] == 0
    stopped = interrupt_cli([*SAFETY_COMPARE, "--storage", url], url, GRID_STUDY, signal.SIGINT, after=5)
    states = [t.state for t in optuna.load_study(study_name=GRID_STUDY, storage=url).trials]
    code, _ = run_cli([*SAFETY_COMPARE, "--storage", url, "--resume"])
    return {
        "interrupted_exit": stopped.returncode,
        "failed_at_interrupt": states.count(TrialState.FAIL),
        "running_at_interrupt": states.count(TrialState.RUNNING),
        "resume_exit": code,
        "identical": snapshot(url) == snapshot(reference),
    }


def database_restart(server: PostgresServer, tmp: Path, down_s: float = 10.0) -> dict[str, object]:
    """4 workers on a grid study; the server is stopped for ``down_s`` once 4 trials are complete."""
    url = server.url
    plan = [*SAFETY_COMPARE[:7], "--strategies", "grid", "--device", "cpu", "--storage", url, "--plan-only"]
    plan += ["--artifacts", str(tmp / "artifacts")]
    assert run_cli(plan)[0] == 0
    beats = ("--heartbeat-interval", "1", "--grace-period", "3", "--device", "cpu")
    procs = [_worker(url, GRID_STUDY, *beats) for _ in range(4)]
    while sum(t.state == TrialState.COMPLETE for t in optuna.load_study(study_name=GRID_STUDY, storage=url).trials) < 4:
        time.sleep(0.2)
    server.stop()
    time.sleep(down_s)
    server.start()
    _wait(procs)
    trials = optuna.load_study(study_name=GRID_STUDY, storage=url).trials
    complete = [(t.params["lr"], t.params["weight_decay"]) for t in trials if t.state == TrialState.COMPLETE]
    planned = len(LEARNING_RATES) * len(WEIGHT_DECAYS)
    return {
        "planned": planned,
        "completed": len(set(complete)),
        "lost": planned - len(set(complete)),
        "duplicated": len(complete) - len(set(complete)),
        "retried": sum(t.state == TrialState.FAIL for t in trials),
        "down_s": down_s,
        "workers_exit_0": all(p.returncode == 0 for p in procs),
    }


def cli_fuzz(tmp: Path) -> dict[str, int]:
    """Every value option of every subcommand with every bad value, each on a fresh storage."""
    counts = {"cases": 0, "exit_0": 0, "exit_2": 0, "other_exit": 0, "tracebacks": 0, "multi_line_errors": 0}
    tiny = ["--n-train", "25", "--steps", "1", "--pretrain-steps", "1", "--strategies", "deelbo", "--report", ""]
    bases = {
        "compare": ["compare", *tiny, "--no-progress", "--device", "cpu"],
        "report": ["report", "--out", str(tmp / "r.html")],
        "worker": ["worker", "--study", "no-such-study", "--device", "cpu"],
        "finish": ["finish", "--study", "no-such-study", "--device", "cpu"],
    }
    with contextlib.chdir(tmp):  # relative paths among the values land in tmp, not in the checkout
        for command, base in bases.items():
            _fuzz_command(command, base, tmp, counts)
    return counts


def _fuzz_command(command: str, base: list[str], tmp: Path, counts: dict[str, int]) -> None:
    for option in value_options(command):
        for value in BAD_VALUES:
            url = "sqlite:///" + str(tmp / f"fuzz-{counts['cases']}.db")
            code, err = run_cli([*base, "--storage", url, option, value])
            counts["cases"] += 1
            counts["exit_0" if code == 0 else "exit_2" if code == 2 else "other_exit"] += 1
            counts["tracebacks"] += "Traceback" in err
            errors = sum(line.startswith("optuna-deelbo") for line in err.splitlines())
            counts["multi_line_errors"] += code == 2 and errors != 1


def main() -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--storage", default=None, help="a PostgreSQL URL (default: start a temporary server)")
    parser.add_argument("--out", default=str(RESULTS / "reliability"))
    parser.add_argument(
        "--parts", choices=("all", "workers", "safety"), default="all", help="workers: parts 1-3; safety: part 4"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.parts in ("all", "workers"):
        _workers_and_faults(args, record)
    if args.parts in ("all", "safety"):
        _data_safety(Path(args.out).with_suffix(".md"), RunRecord.start() if args.parts == "all" else record)


def _workers_and_faults(args: argparse.Namespace, record: RunRecord) -> None:
    """Parts 1-3: throughput per worker count, SIGKILL recovery, numerical faults (rewrites the file's top)."""
    counts = [int(c) for c in args.workers.split(",")]
    artifacts = tempfile.mkdtemp(prefix="reliability-artifacts-")  # shared by the workers on this machine
    recipe = BuiltinTask(n_train=args.n_train, steps=args.steps, checkpoint_every=25, artifacts=artifacts)
    task, _ = recipe.build("cpu")
    with _storage_url(args.storage) as url, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, artifacts, ignore_errors=True)
        rows = throughput(url, recipe, task, counts)
        crash = sigkill(url, recipe, task)
        print(crash, flush=True)
    faults = numerical_faults(dataclasses.replace(task, checkpointing=None))
    _write(Path(args.out), record, recipe, rows, crash, faults, url_given=args.storage is not None)


def _data_safety(md: Path, record: RunRecord) -> None:
    """Part 4 on a PostgreSQL server of its own (it is restarted mid-study); rewrites the file's last section."""
    with tempfile.TemporaryDirectory(prefix="reliability-safety-") as tmp, _server() as server:
        results = {
            "clash": name_clash(Path(tmp)),
            "resume": interrupted_and_resumed(Path(tmp)),
            "restart": database_restart(server, Path(tmp)),
            "fuzz": cli_fuzz(Path(tmp)),
        }
    print(results, flush=True)
    _write_safety(md, record, results)


def _write(
    out: Path,
    record: RunRecord,
    recipe: BuiltinTask,
    rows: list[dict[str, float]],
    crash: dict[str, object],
    faults: list[tuple[str, str, str]],
    *,
    url_given: bool,
) -> None:
    write_csv(out.with_suffix(".csv"), rows)
    base = rows[0]["trials_per_min_busy"]
    table = [
        "| workers | trials | busy s | trials / min (busy) | speed-up | wall s (incl. start-up) | trials / min (wall) |"
    ]
    table.append("|---|---|---|---|---|---|---|")
    for r in rows:
        table.append(
            f"| {r['workers']:.0f} | {r['trials']:.0f} | {r['busy_s']:.1f} | {r['trials_per_min_busy']:.1f} | "
            f"{r['trials_per_min_busy'] / base:.2f}x | {r['wall_s']:.1f} | {r['trials_per_min_wall']:.1f} |"
        )
    fault_rows = ["| injected | trial state | failure:reason |", "|---|---|---|"]
    fault_rows += [f"| {label} | {state} | {reason} |" for label, state, reason in faults]
    crash_text = "\n".join(
        [
            f"**SIGKILL mid-trial** (heartbeat 1 s, grace period 3 s, a checkpoint every {recipe.checkpoint_every}",
            f"of {crash['steps']} steps): trial {crash['killed_trial']} was killed after its checkpoint at step",
            f"{crash['checkpoint_step']} and marked {crash['killed_state']}; its retry, trial {crash['retry_trial']},",
            f"ended {crash['retry_state']} after resuming from step {crash['resumed_from_step']}",
            f"({crash['kill_to_retry_start_s']:.1f} s after the kill; marked failed {crash['kill_to_fail_s']:.1f} s",
            "after the kill by the first replacement worker to look for work once the grace period had passed;",
            "the replacements first pretrain and take the trials still waiting); study:",
            f"{crash['complete']}.",
        ]
    )
    cores = os.cpu_count() or 1
    best = max(r["trials_per_min_busy"] / base for r in rows)
    caveat = (
        f"\n\nThe best speed-up measured, {best:.2f}x, is above the {cores} cores' limit: the one-worker run went"
        "\nslower than its share (causes not separated here: database round trips a second worker overlaps,"
        "\nother work on the machine, cold caches in the first run), so read the"
        f"\nspeed-ups as uncertain by about {best / cores - 1:.0%}."
        if best > cores
        else ""
    )
    server = "a given PostgreSQL server" if url_given else "a PostgreSQL 15 server started for the run (fsync off)"
    text = f"""# Reliability: workers vs throughput, faults survived

{record.header()}
- storage: {server}; every worker is a separate `optuna-deelbo worker` process with one torch thread
- task: embedded digits, N = {recipe.n_train}, {recipe.steps} SGD steps per configuration, batch {recipe.batch_size},
  seed {recipe.seed}; strategy: grid (24 MAP trials); checkpoints every {recipe.checkpoint_every} steps

## Workers vs throughput

This machine has **{cores} CPU cores** (shared with other jobs: see the load average above), so at most
about {cores}x over one worker is possible; the rows with more workers measure what oversubscribing
the cores costs (queue and heartbeat traffic, context switches, each worker's start-up), not a
speed-up. On more machines or cores the same commands add throughput per worker until the
database or the trial length limits them.

{chr(10).join(table)}{caveat}

"busy" runs from the first trial's start to the last trial's end; "wall" adds the workers'
start-up (Python and torch imports, source pretraining: each worker pretrains once).

## Faults injected and survived

{crash_text}
tests/test_workers.py checks the same on every run, and that the resumed trial ends bit for bit
where an uninterrupted one does.

**Numerical faults** (one trial each, on the same task; the study goes on after each):

{chr(10).join(fault_rows)}

**Bad inputs**: the catalogue of bad inputs to the public API and CLI (wrong shapes, unknown names,
corrupt checkpoints, unreachable storage, ...) and their messages is tests/test_bad_inputs.py;
tests/test_workers.py adds the worker's: a study that does not exist, a study without a task
recipe, an unreachable PostgreSQL server, finishing a study that is still being worked off.
"""
    previous = out.with_suffix(".md").read_text() if out.with_suffix(".md").exists() else ""
    safety = previous[previous.find(SAFETY_START) :] if SAFETY_START in previous else ""
    out.with_suffix(".md").write_text(text + ("\n" + safety if safety else ""))
    print(text)


SAFETY_START = "<!-- data-safety -->"


def _write_safety(md: Path, record: RunRecord, r: dict[str, dict[str, object]]) -> None:
    """Replace (or add) the data-safety section at the end of reliability.md; the rest stays as measured."""
    clash, resume, restart, fuzz = r["clash"], r["resume"], r["restart"], r["fuzz"]
    rows = [
        "| name clash: `compare` on a storage holding a user's study named like ours | "
        f"exit {clash['exit']}, the user's study kept: {clash['user_trials_kept']}, studies in the storage "
        f"after: {clash['studies_after']}; message: `{clash['message']}` |",
        "| `compare` (deelbo, grid, tpe; digits N = 50) interrupted by SIGINT mid-trial, then `--resume` | "
        f"interrupted run exit {resume['interrupted_exit']}, trials left failed / running: "
        f"{resume['failed_at_interrupt']} / {resume['running_at_interrupt']}; resume exit {resume['resume_exit']}; "
        "every finished trial, trial count, test accuracy and best parameters identical to an uninterrupted "
        f"run: {resume['identical']} |",
        f"| PostgreSQL 15 stopped for {restart['down_s']:g} s while 4 workers run a 24-trial grid study "
        f"(heartbeat 1 s, grace 3 s) | planned {restart['planned']}, completed {restart['completed']}, "
        f"**lost {restart['lost']}, duplicated {restart['duplicated']}**; trials cut off and retried: "
        f"{restart['retried']}; every worker exited 0: {restart['workers_exit_0']} |",
        f"| CLI fuzz: every value option of compare / report / worker / finish x {len(BAD_VALUES)} bad values, "
        f"fresh storage each | {fuzz['cases']} cases: exit 0 {fuzz['exit_0']}, exit 2 {fuzz['exit_2']}, other "
        f"exit {fuzz['other_exit']}, tracebacks {fuzz['tracebacks']}, errors longer than one line "
        f"{fuzz['multi_line_errors']} |",
    ]
    section = f"""{SAFETY_START}
## Data safety (`python benchmarks/reliability.py --parts safety`)

{record.header()}

| check | outcome |
|---|---|
{chr(10).join(rows)}

tests/test_resume.py, tests/test_outages.py and tests/test_cli_fuzz.py check the same on every CI run
(the fuzz there draws 150 random cases with hypothesis).
"""
    previous = md.read_text() if md.exists() else ""
    kept = previous[: previous.find(SAFETY_START)] if SAFETY_START in previous else previous
    md.write_text(kept.rstrip() + "\n\n" + section)
    print(section)


if __name__ == "__main__":
    main()
