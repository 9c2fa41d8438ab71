"""Checkpoints: a run resumed from step k ends bit for bit where the uninterrupted run ends; bad files are refused."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from optuna_deelbo._errors import CheckpointError
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._objectives import DEELBoObjective, MAPObjective, Objective
from optuna_deelbo.task._builtin import digits_task
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._checkpoint import CheckpointHook, from_bytes, to_bytes
from optuna_deelbo.train._schedules import AdaptiveFeedback
from optuna_deelbo.train._training import TrainConfig, TrainResult, train_model
from optuna_deelbo.tuning._checkpoints import Checkpointing, default_artifacts_dir
from optuna_deelbo.tuning._fit import fit
from optuna_deelbo.tuning._sampler import DEELBoSampler
from optuna_deelbo.tuning.attrs import (
    CHECKPOINT_ARTIFACT,
    CHECKPOINT_RESUME_ERROR,
    CHECKPOINT_STEP,
    RESUMED_STEP,
    RESUMED_TRIAL,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def task(one_cpu_thread: None) -> TaskSpec:
    built, _ = digits_task(60, steps=40, pretrain_steps=20, batch_size=16)
    return built


def _deelbo(task: TaskSpec) -> Objective:
    model = task.build_model()
    return DEELBoObjective(DEELBo(model, task.n_train, task.body_prior(model), head=task.groups(model)))


def _map(task: TaskSpec) -> Objective:
    model = task.build_model()
    return MAPObjective(model, task.groups(model), task.body_prior(model), 1e-3)


def _run(task: TaskSpec, kind: str, **kwargs: Any) -> tuple[Objective, TrainResult]:
    """DE-ELBo on all N, or MAP with validation, early stopping and the adaptive weight-decay rule."""
    if kind in ("deelbo", "deelbo-adam"):
        objective = _deelbo(task)
        config = TrainConfig(lr=0.05, steps=40, batch_size=16, log_every=10, eval_every=10, progress=False)
        if kind == "deelbo-adam":  # sigma's own optimiser is part of the checkpoint
            config = dataclasses.replace(config, sigma_optimizer="adam", sigma_lr=0.05)
        return objective, train_model(objective, task.train.x, task.train.y, config, **kwargs)
    objective = _map(task)
    config = TrainConfig(lr=0.05, steps=40, batch_size=16, log_every=10, eval_every=5, patience=50, progress=False)
    train_split, val_split = task.train_val
    schedule = AdaptiveFeedback(1e-3, every=6)
    result = train_model(
        objective,
        train_split.x,
        train_split.y,
        config,
        val=(val_split.x, val_split.y),
        weight_decay_schedule=schedule,
        **kwargs,
    )
    return objective, result


@pytest.mark.parametrize("kind", ["deelbo", "deelbo-adam", "map"])
def test_resumed_run_ends_exactly_where_the_uninterrupted_run_ends(task: TaskSpec, kind: str) -> None:
    saved: dict[int, bytes] = {}
    reference, plain = _run(task, kind)
    _, full = _run(task, kind, checkpoint=CheckpointHook(7, lambda s: saved.update({s["step"]: to_bytes(s)})))
    assert sorted(saved) == [7, 14, 21, 28, 35]  # every 7th step, never the last (40)
    assert full.final_loss == plain.final_loss  # writing checkpoints changes nothing
    state = from_bytes(saved[21], source="step 21")
    resumed_objective, resumed = _run(task, kind, resume=state)
    assert resumed.final_loss == full.final_loss and resumed.final_nll == full.final_nll
    assert resumed.history == full.history and resumed.val_history == full.val_history
    assert resumed.stopped_step == full.stopped_step == 40
    final, expected = resumed_objective.state_dict(), reference.state_dict()
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    if kind != "map":
        assert resumed.history[-1]["lambda"] == full.history[-1]["lambda"]
        assert resumed.history[-1]["sigma"] == full.history[-1]["sigma"]


def test_garbage_truncated_and_foreign_files_are_refused(task: TaskSpec) -> None:
    saved: list[bytes] = []
    _run(task, "deelbo", checkpoint=CheckpointHook(20, lambda s: saved.append(to_bytes(s))))
    with pytest.raises(CheckpointError, match="unreadable"):
        from_bytes(b"not a checkpoint", source="x")
    with pytest.raises(CheckpointError, match="unreadable"):
        from_bytes(saved[0][: len(saved[0]) // 2], source="x")
    buffer = __import__("io").BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    with pytest.raises(CheckpointError, match="not an optuna-deelbo-checkpoint"):
        from_bytes(buffer.getvalue(), source="x")


def test_checkpoint_of_another_run_is_refused(task: TaskSpec) -> None:
    saved: list[bytes] = []
    _run(task, "deelbo", checkpoint=CheckpointHook(20, lambda s: saved.append(to_bytes(s))))
    objective = _deelbo(task)
    config = TrainConfig(lr=0.01, steps=40, batch_size=16, progress=False)  # other learning rate
    with pytest.raises(CheckpointError, match=r"another run \(lr: 0.05 != 0.01\)"):
        train_model(objective, task.train.x, task.train.y, config, resume=from_bytes(saved[0], source="x"))
    with pytest.raises(CheckpointError, match="another run"):
        train_model(
            _map(task),
            task.train.x,
            task.train.y,
            dataclasses.replace(config, lr=0.05),
            resume=from_bytes(saved[0], source="x"),
        )


def _objective(task: TaskSpec) -> Any:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        return fit(trial, task, lr=lr, weight_decay=trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True))

    return objective


def _crash_and_retry(task: TaskSpec, damage: Any = None) -> tuple[optuna.Study, float]:
    """Run trial 0 to the end with checkpoints, declare it crashed (FAIL), retry it as Optuna's callback does."""
    study = optuna.create_study(sampler=DEELBoSampler(optuna.samplers.RandomSampler(seed=0)))
    study.enqueue_trial({"lr": 0.05})
    first = study.ask()
    value = _objective(task)(first)
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    frozen = study.trials[0]
    if damage is not None:
        damage(frozen)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)
    study.optimize(_objective(task), n_trials=1)
    return study, value


def test_retried_trial_resumes_from_the_newest_checkpoint_and_matches(task: TaskSpec, tmp_path: Path) -> None:
    checkpointed = dataclasses.replace(task, checkpointing=Checkpointing.filesystem(tmp_path, every=15))
    study, value = _crash_and_retry(checkpointed)
    failed, retry = study.trials
    assert failed.user_attrs[CHECKPOINT_STEP] == 30 and failed.user_attrs[RESUMED_STEP] == 0
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.user_attrs[RESUMED_STEP] == 30 and retry.user_attrs[RESUMED_TRIAL] == 0
    assert retry.value == value  # finished exactly as the uninterrupted run did
    metas = optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage)
    # two checkpoint slots, not one per step; the learned trace as a file beside them (its system attr's rows)
    assert sorted(m.filename for m in metas) == ["checkpoint-a.pt", "checkpoint-b.pt", "learned-trace.json"]
    for trial in study.trials:  # the retry also lists its predecessor's artifacts (Optuna copies the system attrs)
        metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        traces = [m for m in metas if m.filename.endswith(".json")]
        exported = [json.loads((tmp_path / m.artifact_id).read_text()) for m in traces]
        assert trial.system_attrs["learned:trace"] in exported and len(exported[0][0]) == 4
    # 2 slots + 2 traces: the retry, resumed at 30 of 40 steps, had no checkpoint left to write
    assert len(list(tmp_path.iterdir())) == 4


def test_corrupt_checkpoint_warns_and_restarts_from_step_zero(task: TaskSpec, tmp_path: Path) -> None:
    checkpointed = dataclasses.replace(task, checkpointing=Checkpointing.filesystem(tmp_path, every=15))

    def corrupt(trial: optuna.trial.FrozenTrial) -> None:
        (tmp_path / trial.user_attrs[CHECKPOINT_ARTIFACT]).write_bytes(b"\x00garbage")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study, value = _crash_and_retry(checkpointed, corrupt)
    retry = study.trials[1]
    assert any("restarting from step 0" in str(w.message) for w in caught)
    assert retry.user_attrs[RESUMED_STEP] == 0 and "unreadable" in retry.user_attrs[CHECKPOINT_RESUME_ERROR]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.value == value
    assert math.isfinite(value)


def test_default_artifact_directory_sits_next_to_the_sqlite_file(tmp_path: Path) -> None:
    assert default_artifacts_dir(f"sqlite:///{tmp_path}/runs/deelbo.db") == tmp_path / "runs" / "deelbo-artifacts"
    assert default_artifacts_dir("postgresql+psycopg://u@h/db") == Path("deelbo-artifacts").resolve()
