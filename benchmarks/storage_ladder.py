"""The storage ladder: trials per second through SQLite, PostgreSQL and the gRPC proxy, with W workers.

Usage: python benchmarks/storage_ladder.py [--workers 1,4,8] [--trials 100]

Writes benchmarks/results/storage-ladder.md. Each worker is its own process that takes planned
trials of one study (the package's ``PlannedStudy``: a WAITING trial handed to one worker under the
database's lock) and writes what ``od.fit`` writes on a DE-ELBo trial (19 user attrs, an
intermediate value every 50 of 300 steps, the result) with no training at all: the storage-bound
end of the ladder, where the database and its connections are the only cost. Rungs: one SQLite file
(``BEGIN IMMEDIATE``), PostgreSQL 15 (a throw-away server from Debian's binaries, tests/_postgres.py),
and Optuna's gRPC storage proxy (``optuna-deelbo proxy``) in front of that PostgreSQL. The clock starts
once every worker process has connected. Every run checks that each planned trial completed exactly once.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _postgres import find_bin_dir, postgres_server
from _record import RESULTS, RunRecord

from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning import open_storage
from optuna_deelbo.tuning.workers import PlannedStudy, QueueEmpty

#: The attrs a DE-ELBo trial gets (names as od.fit writes them; values of the same kinds; the trace a system attr).
ATTRS = {
    "learned:weight_decay": 1e-3,
    "learned:lambda": 1e-4,
    "learned:tau": 1e-2,
    "learned:sigma": 1e-2,
    "learned:trace": [[float(s), 1e-4, 1e-2, 1e-2] for s in range(0, 300, 3)],
    "learned:lambda_layers": {f"layer{i}": 1e-4 for i in range(20)},
    "mode": "deelbo",
    "kappa": 5000.0,
    "select:rule": "train-loss",
    "select:train-loss": 0.5,
    "time:select_s": 0.0,
    "test:nll": 0.5,
    "test:accuracy": 0.9,
    "time:test_eval_s": 0.1,
    "train:loss": 0.5,
    "train:nll": 0.4,
    "time:train_s": 1.0,
    "time:recalibrate_s": 0.01,
    "time:trial_s": 1.1,
}


def _worker(url: str, study_name: str, out: mp.Queue, ready: Any, go: Any) -> None:  # type: ignore[type-arg]
    storage = open_storage(url)
    study = PlannedStudy(study_name=study_name, storage=storage)
    ready.release()
    go.wait()  # timing starts when every worker is connected (process start and imports are not storage cost)
    ran = 0
    while True:
        try:
            trial = study.ask()
        except QueueEmpty:
            break
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        for step in range(50, 301, 50):
            trial.report(0.5, step)
        A.set_trial_attrs(trial, ATTRS)
        study.tell(trial, 0.5)
        ran += 1
    out.put(ran)


def run_rung(url: str, check_url: str, workers: int, trials: int, name: str) -> float:
    """Trials per second of ``workers`` processes on a fresh planned study of ``trials``; checks once-each."""
    study = optuna.create_study(storage=open_storage(check_url), study_name=name)
    for i in range(trials):
        study.enqueue_trial({"lr": 10 ** (-1 - 2 * i / trials)})
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(url, name, out, ready, go)) for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=300)
    start = time.perf_counter()
    go.set()
    ran = sum(out.get(timeout=600) for _ in procs)
    seconds = time.perf_counter() - start
    for p in procs:
        p.join(60)
    done = optuna.load_study(study_name=name, storage=open_storage(check_url)).get_trials()
    assert ran == trials and len(done) == trials and all(t.state == TrialState.COMPLETE for t in done), (ran, name)
    assert len({t.params["lr"] for t in done}) == trials  # none lost, none run twice
    return trials / seconds


def main() -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--trials", type=int, default=100, help="planned trials per run")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found (apt-get install postgresql)")
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres_server(bin_dir) as server:
        port = 13000 + (int(time.time()) % 2000)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "optuna_deelbo.cli", "proxy", "--storage", server.url, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            grpc = f"grpc://localhost:{port}"
            open_storage(grpc)  # waits until the proxy answers
            rungs = {
                "SQLite (one file)": (f"sqlite:///{tmp}/ladder.db", f"sqlite:///{tmp}/ladder.db"),
                "PostgreSQL": (server.url, server.url),
                "gRPC proxy -> PostgreSQL": (grpc, server.url),
            }
            for repeat in range(args.repeats):
                for label, (url, check) in rungs.items():
                    for w in counts:
                        name = f"{label}-{w}-{repeat}".replace(" ", "_")
                        rate = run_rung(url, check, w, args.trials, name)
                        rates.setdefault((label, w), []).append(rate)
                        print(f"{label}, {w} workers: {rate:.1f} trials/s", flush=True)
        finally:
            proxy.terminate()
            proxy.wait(30)
    header = "| storage | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in counts) + " |"
    lines = [header, "|---|" + "---|" * len(counts)]
    for label in dict.fromkeys(k for k, _ in rates):
        cells = []
        for w in counts:
            values = rates[(label, w)]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = f"""# The storage ladder: planned trials per second, storage cost only

{record.header()}
- {args.trials} planned trials per run, each one ask + 6 intermediate values + {len(ATTRS)} attrs + tell (what
  `od.fit` writes on a DE-ELBo trial), no training; one process per worker; {args.repeats} repeats, median (min-max)
  trials per second; every run checked: each planned trial completed exactly once

{chr(10).join(lines)}
"""
    out = RESULTS / "storage-ladder.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
