"""Many worker processes on one planned study: every trial once, the single-process result, crash recovery.

The workers are real ``python -m optuna_deelbo.cli worker`` processes (one torch thread each);
the multi-worker test uses a real PostgreSQL server (see ``postgres_url`` in conftest.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from _groups import PROCESSES
from _optional import optional_import
from _safety import wait_all
from optuna.trial import TrialState

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.cli import main
from optuna_deelbo.report._dashboard import _free_port
from optuna_deelbo.task import DATASET_NAMES
from optuna_deelbo.task._stored import FACTORIES, BuiltinTask, dataset_defaults
from optuna_deelbo.task._text import wordnet_task
from optuna_deelbo.tuning._storage import open_storage
from optuna_deelbo.tuning._study import plan_strategy_study, run_strategy
from optuna_deelbo.tuning._trial_queue import queue_progress
from optuna_deelbo.tuning.attrs import BUILTIN_TASK, CHECKPOINT_STEP, RESUMED_STEP, RESUMED_TRIAL
from optuna_deelbo.tuning.strategies import LEARNING_RATES, WEIGHT_DECAYS, get_strategy

# several processes each: one xdist worker runs them one after another (conftest.PROCESSES)
pytestmark = [pytest.mark.usefixtures("one_cpu_thread"), PROCESSES]

#: The tiny embedded-digits task every test here plans (the CLI flags and the recipe agree).
TASK_FLAGS = ["--n-train", "50", "--pretrain-steps", "20", "--batch-size", "16", "--seed", "0"]


def _worker(url: str, study: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    argv = [sys.executable, "-m", "optuna_deelbo.cli", "worker", "--storage", url, "--study", study, *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_eight_postgres_workers_run_every_planned_trial_once_and_match_one_process(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = ["--steps", "40", "--checkpoint-every", "10", "--artifacts", str(tmp_path / "artifacts")]
    plan = ["compare", "--plan-only", "--storage", postgres_url, "--strategies", "grid", *TASK_FLAGS, *steps]
    assert main([*plan, "--device", "cpu"]) == 0
    name = "digits-N50-seed0/l2-sp/grid"
    assert f"optuna-deelbo worker --storage {postgres_url} --study {name}" in capsys.readouterr().out

    procs = [_worker(postgres_url, name, "--device", "cpu") for _ in range(8)]
    # The reference meanwhile: the same strategy and recipe in this one process (checkpoints off).
    recipe = BuiltinTask.from_json(optuna.load_study(study_name=name, storage=postgres_url).user_attrs[BUILTIN_TASK])
    task, _ = recipe.build("cpu")
    reference_storage = optuna.storages.InMemoryStorage()
    reference = run_strategy(get_strategy("grid"), task, reference_storage, "reference")
    outputs = wait_all(procs, 240)

    ran = [int(out.split(": ran ")[1].split()[0]) for out in outputs]
    planned = len(LEARNING_RATES) * len(WEIGHT_DECAYS)
    assert sum(ran) == planned and sum(n > 0 for n in ran) >= 2, ran  # shared out, each trial run by one worker
    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials()
    assert len(trials) == planned and all(t.state == TrialState.COMPLETE for t in trials)
    params = [(t.params["lr"], t.params["weight_decay"]) for t in trials]
    assert sorted(params) == sorted((lr, wd) for lr in LEARNING_RATES for wd in WEIGHT_DECAYS)  # none lost/doubled
    assert all(t.user_attrs[CHECKPOINT_STEP] == 30 for t in trials)  # the workers checkpointed (every 10 of 40 steps)
    reference_study = optuna.load_study(study_name="reference", storage=reference_storage)
    expected = {(t.params["lr"], t.params["weight_decay"]): t.value for t in reference_study.trials}
    assert {p: t.value for p, t in zip(params, trials, strict=True)} == expected  # bit for bit, trial by trial

    assert main(["finish", "--storage", postgres_url, "--study", name, "--device", "cpu"]) == 0
    finished = optuna.load_study(study_name=name, storage=postgres_url).user_attrs
    assert finished["best_params"] == reference.best_params
    assert finished["best_trial"] == reference_study.user_attrs["best_trial"]
    assert finished["test:accuracy"] == reference.test_accuracy  # the retrained winner, too
    assert queue_progress(study).done


def _read_until(proc: subprocess.Popen[str], text: str, timeout_s: float) -> str:
    """What ``proc`` printed up to the line holding ``text`` (a server's ready line); fails after ``timeout_s``."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert lines and text in lines[-1], f"no {text!r} within {timeout_s} s: {''.join(lines)[-2000:]}"
    return "".join(lines)


def test_four_workers_through_a_grpc_proxy_in_front_of_postgres_run_every_trial_once(
    postgres_url: str, tmp_path: Path
) -> None:
    optional_import("grpc", "grpc")
    port = _free_port("127.0.0.1")
    argv = [sys.executable, "-m", "optuna_deelbo.cli", "proxy", "--storage", postgres_url, "--host", "127.0.0.1"]
    proxy = subprocess.Popen([*argv, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"grpc://127.0.0.1:{port}"
    try:  # the proxy starts a Python with torch: on a loaded 2-core machine that can take longer than a client waits
        ready = _read_until(proxy, "serving", 120)
        artifacts = ["--artifacts", str(tmp_path / "artifacts")]
        plan = ["compare", "--plan-only", "--storage", url, "--strategies", "grid", *TASK_FLAGS, "--steps", "8"]
        assert main([*plan, *artifacts, "--device", "cpu"]) == 0  # planned through the proxy too
        name = "digits-N50-seed0/l2-sp/grid"
        outputs = wait_all([_worker(url, name, "--device", "cpu") for _ in range(4)], 240)
        assert all("no heartbeats" in out for out in outputs)  # each worker says what the proxy cannot do
        ran = [int(out.split(": ran ")[1].split()[0]) for out in outputs]
        planned = len(LEARNING_RATES) * len(WEIGHT_DECAYS)
        assert sum(ran) == planned and sum(n > 0 for n in ran) >= 2, ran
        trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()  # the database itself
        assert len(trials) == planned and all(t.state == TrialState.COMPLETE for t in trials)
        params = sorted((t.params["lr"], t.params["weight_decay"]) for t in trials)
        assert params == sorted((lr, wd) for lr in LEARNING_RATES for wd in WEIGHT_DECAYS)  # 0 lost, 0 duplicated
        assert main(["finish", "--storage", url, "--study", name, "--device", "cpu"]) == 0
        assert "best_params" in optuna.load_study(study_name=name, storage=postgres_url).user_attrs
    finally:
        proxy.terminate()
        out, _ = proxy.communicate(timeout=30)
    assert f"serving {postgres_url} at {url}" in ready + out


def test_grpc_storage_urls_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    optional_import("grpc", "grpc")
    from optuna_deelbo._errors import StorageError
    from optuna_deelbo.tuning import _storage

    with pytest.raises(StorageError, match="grpc://HOST:PORT"):
        open_storage("grpc://localhost")
    with pytest.raises(ConfigError, match="no heartbeats"):
        open_storage("grpc://localhost:1", heartbeat_interval=10)
    monkeypatch.setattr(_storage, "GRPC_CONNECT_TIMEOUT_S", 1)
    with pytest.raises(StorageError, match="optuna-deelbo proxy --storage"):
        open_storage(f"grpc://127.0.0.1:{_free_port('127.0.0.1')}")
    with pytest.raises(StorageError, match="serves a database"):
        _storage.serve_grpc_proxy("grpc://localhost:13000")


def test_worker_killed_mid_trial_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    recipe = BuiltinTask(
        n_train=50, pretrain_steps=20, batch_size=16, steps=150, checkpoint_every=15, artifacts=str(tmp_path / "art")
    )
    task, _ = recipe.build("cpu")
    name = "crash/deelbo"
    plan_strategy_study(get_strategy("deelbo"), recipe, open_storage(url), name, task=task)
    beats = ["--device", "cpu", "--heartbeat-interval", "1", "--grace-period", "3"]

    doomed = _worker(url, name, *beats)
    storage = open_storage(url)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        victim = next((t for t in running if t.user_attrs.get(CHECKPOINT_STEP, 0) > 0), None)
        time.sleep(0.05)
    assert victim is not None, "no trial wrote a checkpoint"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=30)
    assert doomed.returncode == -signal.SIGKILL

    rescuer = _worker(url, name, *beats)
    wait_all([rescuer], 240)
    study = optuna.load_study(study_name=name, storage=storage)
    killed = study.trials[victim.number]
    checkpoint_step = killed.user_attrs[CHECKPOINT_STEP]  # the newest checkpoint it wrote before it died
    assert killed.state == TrialState.FAIL and 0 < checkpoint_step < 150
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # The retry resumes from the newest checkpoint the killed trial wrote whole. Its checkpoint:step attr may lag
    # one interval behind: a kill between the two attr writes (artifact id, then step) leaves the step stale
    # (seen once under Optuna 5.0.0: resumed at 30, attr 15); the artifact id, which resuming reads, is right.
    every = recipe.checkpoint_every
    assert retry.user_attrs[RESUMED_STEP] - checkpoint_step in (0, every) and retry.user_attrs[RESUMED_TRIAL] == 0
    progress = queue_progress(study)
    assert progress.done and progress.complete == progress.planned == 4 and progress.failed == 0
    assert progress.retried == 1

    # The resumed trial ends exactly where an uninterrupted run of its configuration ends.
    uninterrupted = optuna.create_study(sampler=get_strategy("deelbo").sampler(task))
    uninterrupted.enqueue_trial(killed.params)
    uninterrupted.optimize(get_strategy("deelbo").objective(task), n_trials=1)
    assert retry.value == uninterrupted.trials[0].value


def test_worker_and_finish_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'errors.db'}"
    optuna.create_study(storage=url, study_name="plain")
    assert main(["worker", "--storage", url, "--study", "missing"]) == 2
    assert "study 'missing' does not exist in this storage (studies there: 'plain')" in capsys.readouterr().err
    assert main(["worker", "--storage", url, "--study", "plain"]) == 2
    assert "study 'plain' has no stored built-in task" in capsys.readouterr().err
    assert main(["finish", "--storage", url, "--study", "plain"]) == 2
    assert "has no stored built-in task" in capsys.readouterr().err

    port = _free_port("127.0.0.1")  # a port nobody listens on
    assert main(["worker", "--storage", f"postgresql+psycopg://u@127.0.0.1:{port}/db", "--study", "x"]) == 2
    assert "cannot open storage" in capsys.readouterr().err

    plan = ["compare", "--plan-only", "--storage", url, "--strategies", "deelbo", *TASK_FLAGS, "--steps", "5"]
    assert main([*plan, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["finish", "--storage", url, "--study", "digits-N50-seed0/l2-sp/deelbo"]) == 2
    assert "is not worked off yet (4 waiting, 0 running)" in capsys.readouterr().err


def test_a_builtin_task_takes_each_default_from_its_dataset_factory(capsys: pytest.CaptureFixture[str]) -> None:
    """Task settings are declared once, in the factories' signatures: BuiltinTask and compare's help read them."""
    wordnet = inspect.signature(wordnet_task).parameters
    text = BuiltinTask(dataset="wordnet-4", data_dir="/usr/share/wordnet")
    assert (text.steps, text.batch_size) == (wordnet["steps"].default, wordnet["batch_size"].default) == (150, 16)
    # the digits JSON is what 0.3 stored (a resumed study's stored task still matches)
    assert BuiltinTask().to_json() == {
        "version": 1,
        "dataset": "digits",
        "n_train": None,
        "seed": 0,
        "prior": "l2-sp",
        "steps": 300,
        "batch_size": 64,
        "pretrain_steps": None,
        "data_dir": None,
        "backbone": "cifar-resnet20",
        "cache_dir": None,
        "checkpoint_every": None,
        "artifacts": None,
        "deelbo": "default",
    }
    assert tuple(FACTORIES) == DATASET_NAMES  # a dataset without a factory would have no defaults
    assert dataset_defaults("digits") == {"n_train": 100, "steps": 300, "batch_size": 64, "pretrain_steps": 400}
    assert dataset_defaults("cifar10")["backbone"] == "cifar-resnet20" and "pretrain_steps" not in dataset_defaults(
        "wordnet-4"
    )
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default digits / cifar10-jpeg / cifar10 300, wordnet-4 150)" in shown
    assert "target training-set size N (default digits 100, cifar10-jpeg / cifar10 50, wordnet-4 40)" in shown


def test_recipe_round_trips_and_refuses_bad_json() -> None:
    recipe = BuiltinTask(n_train=50, steps=7, checkpoint_every=5, artifacts="/tmp/x")
    assert BuiltinTask.from_json(recipe.to_json()) == recipe
    with pytest.raises(ConfigError, match="version None is not supported"):
        BuiltinTask.from_json({"dataset": "digits"})
    with pytest.raises(ConfigError, match=r"unknown keys \['epochs'\]"):
        BuiltinTask.from_json({**recipe.to_json(), "epochs": 3})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        BuiltinTask.from_json("digits")
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'"):
        BuiltinTask(dataset="mnist")
    with pytest.raises(ConfigError, match="checkpoint_every needs an artifacts directory"):
        BuiltinTask(checkpoint_every=10)
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        BuiltinTask(steps=0)


def test_a_trial_left_running_without_heartbeats_is_run_by_compare_resume(tmp_path: Path) -> None:
    """What the README tells a proxy user whose worker died: `compare --resume` with the plan's settings."""
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    flags = ["--strategies", "deelbo", *TASK_FLAGS, "--steps", "4", "--device", "cpu"]
    assert main(["compare", "--plan-only", "--storage", url, *flags]) == 0
    name = "digits-N50-seed0/l2-sp/deelbo"
    study = optuna.load_study(study_name=name, storage=url)
    from optuna_deelbo.tuning.workers import PlannedStudy

    PlannedStudy.of(study, open_storage(url)).ask()  # a worker took it and died: RUNNING, no heartbeat
    assert main(["compare", "--resume", "--storage", url, *flags, "--report", "", "--no-progress"]) == 0
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    complete = sorted(t.params["lr"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == sorted(LEARNING_RATES)  # each planned configuration once
    assert queue_progress(optuna.load_study(study_name=name, storage=url)).done


def test_every_builtin_task_field_is_a_compare_option() -> None:
    """The CLI builds its task field by field from the options of the same dest: a new field needs its option."""
    from optuna_deelbo.cli import build_parser

    compare = next(
        action.choices["compare"]
        for action in build_parser()._actions
        if isinstance(action.choices, dict) and "compare" in action.choices
    )
    dests = {action.dest for action in compare._actions}
    assert {f.name for f in dataclasses.fields(BuiltinTask)} <= dests
