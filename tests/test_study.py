"""tuning/_study.py: the study lifecycle -- create with its attrs, refuse / resume / overwrite, run, finish, plan."""

from __future__ import annotations

import optuna
import pytest

import optuna_deelbo as od
from optuna_deelbo.tuning import StrategyResult, get_strategy, run_strategy, study_name_for
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._study import create_strategy_study
from optuna_deelbo.tuning.workers import plan_compare

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture
def task(tiny_digits_task: od.TaskSpec) -> od.TaskSpec:
    return tiny_digits_task


def test_a_created_study_holds_its_plan_and_attrs(task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    study = create_strategy_study(get_strategy("deelbo"), task, storage, "s")
    assert [t.system_attrs["fixed_params"] for t in study.trials] == [{"lr": lr} for lr in (0.1, 0.03, 0.01, 0.003)]
    attrs = study.user_attrs
    assert attrs[A.STRATEGY] == "deelbo" and attrs[A.PLANNED] == 4
    assert attrs[A.TASK] == {"name": task.name, "N": 50, "prior": "l2-sp", "steps": 4}
    assert attrs[A.PLAN]["strategy"] == "deelbo" and A.BUILTIN_TASK not in attrs
    assert study.metric_names == ["selection_score"]


def test_a_taken_name_is_refused_resumed_only_with_the_same_plan_or_overwritten(task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    create_strategy_study(get_strategy("grid"), task, storage, "s")
    with pytest.raises(od.StudyExists, match=r"--resume .*--overwrite"):
        create_strategy_study(get_strategy("grid"), task, storage, "s")
    with pytest.raises(od.StudyExists, match=r"planned with another recipe \(.*strategy: 'grid' -> 'deelbo'"):
        create_strategy_study(get_strategy("deelbo"), task, storage, "s", if_exists="resume")
    assert len(create_strategy_study(get_strategy("grid"), task, storage, "s", if_exists="resume").trials) == 24
    fresh = create_strategy_study(get_strategy("deelbo"), task, storage, "s", if_exists="overwrite")
    assert fresh.user_attrs[A.STRATEGY] == "deelbo"
    with pytest.raises(od.ConfigError, match=r"unknown if_exists 'maybe'"):
        create_strategy_study(get_strategy("grid"), task, storage, "t", if_exists="maybe")


def test_a_run_writes_the_result_attrs_and_a_rerun_returns_them_without_training(task: od.TaskSpec) -> None:
    storage = optuna.storages.InMemoryStorage()
    strategy = get_strategy("deelbo", learning_rates=[0.1, 0.01])
    result = run_strategy(strategy, task, storage, "s")
    study = optuna.load_study(study_name="s", storage=storage)
    assert StrategyResult.from_study(study) == result
    assert study.user_attrs[A.BEST_TRIAL] in (0, 1) and result.learned[A.LEARNED_WEIGHT_DECAY] > 0
    assert run_strategy(strategy, task, storage, "s", if_exists="resume") == result
    assert len(study.trials) == 2  # nothing ran again


def test_plan_compare_checks_the_strategies_before_any_pretraining() -> None:
    storage = optuna.storages.InMemoryStorage()
    builtin = od.BuiltinTask(n_train=50, steps=4, pretrain_steps=10)
    with pytest.raises(od.ConfigError, match=r"unknown strategy 'gird'"):
        plan_compare(builtin, "deelbo,gird", storage)
    studies = plan_compare(builtin, "deelbo", storage, device="cpu")
    assert [s.study_name for s in studies] == ["digits-N50-seed0/l2-sp/deelbo"]
    assert od.BuiltinTask.from_json(studies[0].user_attrs[A.BUILTIN_TASK]) == builtin
    with pytest.raises(od.StudyExists):
        plan_compare(builtin, "deelbo", storage, device="cpu")


def test_study_names_say_task_prior_and_strategy(task: od.TaskSpec) -> None:
    assert study_name_for(task, "tpe") == "digits-N50-seed0/l2-sp/tpe"
