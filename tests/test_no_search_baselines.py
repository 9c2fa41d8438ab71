"""What users run instead of a DE-ELBo search (issue 33): ``default`` (one MAP run) and ``tpe-budget`` (the duel)."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import optuna_deelbo as od
from optuna_deelbo.cli import main
from optuna_deelbo.task._stored import BuiltinTask
from optuna_deelbo.train._types import run_fingerprint
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning import study_name_for
from optuna_deelbo.tuning._study import compare, plan_compare
from optuna_deelbo.tuning._trial_queue import queue_progress
from optuna_deelbo.tuning.strategies import DEFAULT_STRATEGIES, DefaultStrategy, TPEBudgetStrategy, get_strategy
from optuna_deelbo.tuning.strategies.default import default_weight_decay
from optuna_deelbo.tuning.strategies.tpe_budget import spent_seconds

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if not t.user_attrs.get(A.SKIPPED)]


def test_the_main_job_shows_the_duel_and_the_no_search_floor() -> None:
    assert DEFAULT_STRATEGIES == ("deelbo", "grid", "tpe", "tpe-budget", "default")


def test_default_is_one_map_run_on_all_n_at_the_common_settings(tiny_digits_task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    (result,) = compare(tiny_digits_task, ["default"], storage)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    (trial,) = study.trials
    assert trial.params == {"lr": 0.01, "weight_decay": 5e-4} and trial.user_attrs[A.MODE] == "map"
    assert result.n_trials == 1 and result.retrain_s == 0.0
    again = od.tuning.trials.retrain(tiny_digits_task, 0.01, 5e-4)  # the same run: all N, the same seed
    assert again.test is not None and result.test_accuracy == again.test.accuracy
    assert trial.value == pytest.approx(again.train_loss)


def test_default_weight_decay_is_the_encoders_for_a_model_with_attention() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)

    assert default_weight_decay(Encoder()) == 0.01
    assert default_weight_decay(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())) == 5e-4
    assert DefaultStrategy(weight_decay=0.1).weight_decay == 0.1
    with pytest.raises(od.ConfigError, match="lr"):
        DefaultStrategy(lr=float("nan"))


def test_tpe_budget_runs_until_the_deelbo_searchs_wall_clock_is_spent(tiny_digits_task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    deelbo, duel = compare(tiny_digits_task, ["deelbo", "tpe-budget"], storage, tpe_trials=40)
    study = optuna.load_study(study_name=duel.study_name, storage=storage)
    assert study.user_attrs[A.BUDGET_S] == pytest.approx(deelbo.total_s)
    trained, skipped = _trained(study), [t for t in study.trials if t.user_attrs.get(A.SKIPPED)]
    assert trained and skipped, "40 trials of a tiny task fit in 4 DE-ELBo runs' time: the budget stops them"
    assert [t.number for t in trained] == list(range(len(trained)))  # the skipped are the last ones
    assert all(t.state == TrialState.PRUNED and "time:train_s" not in t.user_attrs for t in skipped)
    assert "the budget of" in skipped[0].user_attrs[A.FAILURE_REASON]
    before_last = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trained[:-1])  # type: ignore[operator]
    assert before_last < deelbo.total_s <= spent_seconds(study)  # Optuna's timeout: none starts after the budget
    assert duel.n_trials == len(trained) == queue_progress(study).trained
    assert queue_progress(study).skipped == len(skipped)


def test_spent_seconds_leaves_out_the_skipped_and_the_unfinished() -> None:
    study = optuna.create_study()
    start = datetime.datetime(2026, 12, 7, 6, 0, 0)
    for seconds, skipped in ((2.0, False), (3.0, False), (0.5, True)):
        trial = optuna.trial.create_trial(value=1.0, user_attrs={A.SKIPPED: True} if skipped else {})
        trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=seconds)
        study.add_trial(trial)
    study.enqueue_trial({})
    assert spent_seconds(study) == pytest.approx(5.0)


def test_tpe_budget_needs_a_deelbo_search_before_it_or_a_budget() -> None:
    storage = optuna.storages.InMemoryStorage()
    task = od.digits_task(n_train=30, steps=2, pretrain_steps=2, progress=False)[0]
    for order in (["tpe-budget"], ["grid", "tpe-budget", "deelbo"]):
        with pytest.raises(od.ConfigError, match=r"list deelbo .*before tpe-budget"):
            compare(task, order, storage)
    assert optuna.get_all_study_names(storage) == []  # refused before anything trained
    # any DE-ELBo search lends its wall-clock, the one-run deelbo-lr-free too; a MAP search before it does not
    results = compare(task, ["default", "deelbo-lr-free", "tpe-budget"], storage)
    budget = optuna.load_study(study_name=study_name_for(task, "tpe-budget"), storage=storage).user_attrs[A.BUDGET_S]
    assert budget == pytest.approx(results[1].total_s) and budget != pytest.approx(results[0].total_s)
    with pytest.raises(od.ConfigError, match="finite number of seconds > 0"):
        TPEBudgetStrategy(budget_s=0.0)
    with pytest.raises(od.ConfigError, match="has no budget"):
        get_strategy("tpe-budget").objective(task)
    fixed = TPEBudgetStrategy(budget_s=1e-9, trials=3)  # a budget given by hand: the first trial runs, then none
    result = od.tuning.run_strategy(fixed, task, storage, "by-hand")
    assert result.n_trials == 1


def test_tpe_budget_is_not_planned_for_workers_and_plan_only_leaves_it_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    builtin = BuiltinTask(n_train=30, steps=2, pretrain_steps=2)
    with pytest.raises(od.ConfigError, match="cannot be planned for workers"):
        plan_compare(builtin, ["deelbo", "tpe-budget"], optuna.storages.InMemoryStorage())
    tiny = ["--n-train", "30", "--steps", "2", "--pretrain-steps", "2"]
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    assert main(["compare", "--plan-only", "--storage", url, *tiny]) == 0
    planned = sorted(n.rsplit("/", 1)[1] for n in optuna.get_all_study_names(od.open_storage(url)))
    assert planned == sorted(s for s in DEFAULT_STRATEGIES if s != "tpe-budget")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    capsys.readouterr()
    assert main(["compare", "--plan-only", "--storage", other, *tiny, "--strategies", "deelbo,tpe-budget"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be planned for workers" in err[0], err


def test_the_progress_log_says_once_why_the_rest_was_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    args = ["compare", "--storage", url, "--n-train", "30", "--steps", "4", "--pretrain-steps", "4", "--report", ""]
    assert main([*args, "--strategies", "deelbo,tpe-budget", "--tpe-trials", "40", "--no-progress"]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "tpe-budget: skipped: the budget of" in skipped[0], skipped
    assert "trials skipped)" in skipped[0]


def test_lr_free_is_one_map_run_with_prodigy(tiny_digits_task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    (result,) = compare(tiny_digits_task, ["lr-free"], storage)
    (trial,) = optuna.load_study(study_name=result.study_name, storage=storage).trials
    assert trial.params == {"lr": 1.0, "weight_decay": 5e-4} and result.n_trials == 1
    _, run = od.tuning.trials.fit_map(tiny_digits_task, 1.0, 5e-4, tiny_digits_task.train, weight_optimizer="prodigy")
    assert trial.value == pytest.approx(run.final_loss)  # the same run: Prodigy, all N, the same seed
    sgd = od.tuning.trials.fit_map(tiny_digits_task, 1.0, 5e-4, tiny_digits_task.train)[1]
    assert sgd.final_loss != pytest.approx(run.final_loss)  # lr 1 means Prodigy's multiplier, not SGD's rate


def _linear_map_objective() -> od.bayes.MAPObjective:
    model = nn.Linear(3, 2)
    groups = od.bayes.ParameterGroups.split(model, ("bias",))
    body = groups.flat(dict(model.named_parameters()), "body").detach().clone()
    return od.bayes.MAPObjective(model, groups, od.bayes.IsotropicGaussian(body), 0.0)


def test_prodigy_is_checked_and_named_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(od.ConfigError, match="unknown weight_optimizer 'adamw'"):
        od.train.TrainConfig(lr=0.1, weight_optimizer="adamw")
    objective = _linear_map_objective()
    config = od.train.TrainConfig(lr=1.0, steps=2, batch_size=4, weight_optimizer="prodigy", progress=False)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    assert od.train.train_model(objective, x, y, config).stopped_step == 2
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # as if not installed: import raises ImportError
    with pytest.raises(od.ConfigError, match=r"pip install 'optuna-deelbo\[lrfree\]'"):
        od.train.train_model(objective, x, y, config)


def test_a_checkpoint_of_an_sgd_run_keeps_its_fingerprint() -> None:
    """Checkpoints written before weight_optimizer existed still resume: SGD adds no key."""
    objective = _linear_map_objective()
    sgd = run_fingerprint(objective, od.train.TrainConfig(lr=0.1), 8)
    prodigy = run_fingerprint(objective, od.train.TrainConfig(lr=1.0, weight_optimizer="prodigy"), 8)
    assert "weight_optimizer" not in sgd and prodigy["weight_optimizer"] == "prodigy"


def test_tpe_budget_takes_the_first_deelbo_search_before_it(tiny_digits_task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    descend, deelbo, duel = compare(tiny_digits_task, ["deelbo-descend", "deelbo", "tpe-budget"], storage, tpe_trials=2)
    budget = optuna.load_study(study_name=duel.study_name, storage=storage).user_attrs[A.BUDGET_S]
    assert budget == pytest.approx(descend.total_s) and budget != pytest.approx(deelbo.total_s)


def test_fit_once_in_a_maximising_study_is_refused_naming_what_it_is(tiny_digits_task: od.TaskSpec) -> None:
    from optuna_deelbo.tuning._fit import fit_once

    study = optuna.create_study(direction="maximize")
    with pytest.raises(od.ConfigError, match=r"lr-free strategies' objective \(fit_once\) returns a loss"):
        fit_once(study.ask(), tiny_digits_task, lr=0.01, weight_decay=5e-4)
