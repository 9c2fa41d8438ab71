"""Never lose a user's study: name clashes are refused, interrupted runs resume to the uninterrupted result."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from _safety import interrupt_cli, snapshot
from optuna.trial import TrialState

import optuna_deelbo as od
from optuna_deelbo.cli import main
from optuna_deelbo.tuning._study import compare, study_name_for
from optuna_deelbo.tuning._trial_queue import queue_progress

optuna.logging.set_verbosity(optuna.logging.WARNING)
#: One torch thread, as the interrupted CLI children run (OMP_NUM_THREADS=1): the in-process reference and resumed
#: runs must reduce floats in the same order to match them exactly (with 2 threads they differ by ~1e-4, measured).
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

#: A small real compare: digits N = 50, 60 steps per trial (long enough to interrupt mid-trial).
COMPARE = [
    "compare",
    "--n-train",
    "50",
    "--steps",
    "60",
    "--pretrain-steps",
    "60",
    "--strategies",
    "deelbo,grid,tpe",
    "--tpe-trials",
    "8",
    "--report",
    "",
    "--no-progress",
]
STRATEGIES = ("deelbo", "grid", "tpe")


@pytest.fixture(scope="module")
def task() -> od.TaskSpec:
    return od.digits_task(n_train=30, steps=8, pretrain_steps=20, progress=False)[0]


def _user_study(url: str, name: str) -> optuna.Study:
    study = optuna.create_study(storage=url, study_name=name)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"x": 1.0}, distributions={"x": _dist()}))
    return study


def _dist() -> optuna.distributions.FloatDistribution:
    return optuna.distributions.FloatDistribution(0.0, 2.0)


def test_a_name_clash_is_refused_and_the_users_study_kept(tmp_path: Path, task: od.TaskSpec) -> None:
    url = f"sqlite:///{tmp_path / 'user.db'}"
    name = study_name_for(task, "grid")
    _user_study(url, name)
    storage = od.open_storage(url)
    with pytest.raises(od.StudyExists, match=r"already exists .*--resume .*--overwrite"):
        compare(task, ["deelbo", "grid"], storage)
    assert optuna.get_all_study_names(storage) == [name]  # refused before DE-ELBo's study was made
    kept = optuna.load_study(study_name=name, storage=storage)
    assert [t.params for t in kept.trials] == [{"x": 1.0}]
    with pytest.raises(od.StudyExists, match="not planned by optuna-deelbo"):
        compare(task, ["grid"], storage, if_exists="resume")
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 1
    result = compare(task, ["grid"], storage, if_exists="overwrite")[0]  # asked: replaced
    assert result.n_trials == 24 and "x" not in result.best_params
    with pytest.raises(od.StudyExists, match=r"another recipe \(task\.steps: 8 -> 9"):
        compare(od.digits_task(n_train=30, steps=9, pretrain_steps=20)[0], ["grid"], storage, if_exists="resume")
    finished = compare(task, ["grid"], storage, if_exists="resume")[0]  # finished: its result, nothing trained
    assert finished.test_accuracy == result.test_accuracy and finished.total_s == result.total_s


def test_cli_refuses_a_clash_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'user.db'}"
    args = [*COMPARE, "--storage", url, "--strategies", "grid", "--steps", "5"]
    task_name = od.digits_task(n_train=50, steps=5, pretrain_steps=60)[0]
    _user_study(url, study_name_for(task_name, "grid"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0], err
    assert main([*args, "--plan-only"]) == 2  # planning refuses too
    assert "already exists" in capsys.readouterr().err


def test_interrupted_compare_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    assert main([*COMPARE, "--storage", reference]) == 0
    url = f"sqlite:///{tmp_path / 'interrupted.db'}"
    args = [*COMPARE, "--storage", url]
    names = {s: f"digits-N50-seed0/l2-sp/{s}" for s in STRATEGIES}
    for study, sig, after in ((names["grid"], signal.SIGINT, 5), (names["tpe"], signal.SIGTERM, 3)):
        stopped = interrupt_cli(args + (["--resume"] if sig == signal.SIGTERM else []), url, study, sig, after)
        assert stopped.returncode == 130, stopped.stderr[-2000:]
        last = stopped.stderr.strip().splitlines()[-1]
        assert "interrupted" in last and last.endswith("--resume") and "Traceback" not in stopped.stderr, last
        states = [t.state for t in optuna.load_study(study_name=study, storage=url).trials]
        assert TrialState.RUNNING not in states  # marked failed, not left running
        assert states.count(TrialState.FAIL) == 1
    assert main([*args, "--resume"]) == 0
    assert snapshot(url) == snapshot(reference)
    for study in names.values():
        progress = queue_progress(optuna.load_study(study_name=study, storage=url))
        assert progress.failed == 0 and progress.done  # every interrupted trial was replaced by its retry
