"""The batched learning-rate search (train/_batched.py, tuning/_batched.py): each member equals its own run."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import optuna
import pytest
import torch
from _nets import F64, make_net
from torch import nn

import optuna_deelbo as od
from optuna_deelbo._errors import TrainingDiverged
from optuna_deelbo.bayes import DEELBo, DEELBoObjective, IsotropicGaussian, MAPObjective, recalibrate_batchnorm
from optuna_deelbo.cli import main
from optuna_deelbo.train import TrainConfig, train_model
from optuna_deelbo.train._batched import BatchingUnsupported, batching_obstacle, probe_batched_forward, train_batched
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._batched import fit_deelbo_batched
from optuna_deelbo.tuning._fit import fit_deelbo
from optuna_deelbo.tuning.strategies import DEELBoStrategy

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class NoBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _objective(model: nn.Module) -> DEELBoObjective:
    groups = od.bayes.ParameterGroups.split(model, ("head.",))
    body = groups.flat(dict(model.named_parameters()), "body").detach().clone()
    return DEELBoObjective(DEELBo(model, 40, IsotropicGaussian(body), head=groups, init_sigma=1e-2))


def _build(kind: str) -> nn.Module:
    if kind == "batchnorm":
        return make_net(0)[0]
    torch.manual_seed(0)
    return NoBatchNorm().to(F64)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 4, generator=g, dtype=F64), torch.randint(0, 3, (40,), generator=g)


def _configs() -> list[TrainConfig]:
    base = TrainConfig(lr=0.1, steps=12, batch_size=8, log_every=3, progress=False, device="cpu", seed=3)
    # per member: learning rate, clipping (the 0.05 clip binds), sigma's learning rate
    return [
        base,
        dataclasses.replace(base, lr=0.03, clip_norm=0.05),
        dataclasses.replace(base, lr=0.3, clip_norm=None, sigma_lr=0.01),
    ]


def _numbers(values: dict[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


def _augment(x: torch.Tensor) -> torch.Tensor:
    return x + 0.1 * torch.randn_like(x)  # draws from the global RNG, as the image augmentations do


@pytest.mark.parametrize("kind", ["batchnorm", "dropout"])
def test_every_member_equals_its_own_sequential_run(kind: str) -> None:
    x, y = _data()
    configs = _configs()
    sequential = []
    for config in configs:
        objective = _objective(_build(kind))
        result = train_model(objective, x, y, config, transform=_augment)
        sequential.append((objective, result))
    objectives = [_objective(_build(kind)) for _ in configs]
    outcomes = train_batched(objectives, x, y, configs, transform=_augment)
    for (seq, seq_result), objective, result in zip(sequential, objectives, outcomes, strict=True):
        assert isinstance(result, od.train.TrainResult)
        if kind == "batchnorm":  # the batched forward keeps no running statistics: recompute both
            recalibrate_batchnorm(seq.model, x)
            recalibrate_batchnorm(objective.model, x)
        for (name, a), b in zip(seq.state_dict().items(), objective.state_dict().values(), strict=True):
            assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), name
        assert len(seq_result.history) == len(result.history) == 4
        for row_a, row_b in zip(seq_result.history, result.history, strict=True):
            assert row_a.keys() == row_b.keys()
            for key in row_a:
                assert math.isclose(row_a[key], row_b[key], rel_tol=1e-9, abs_tol=1e-12), key
        assert math.isclose(seq_result.final_loss, result.final_loss, rel_tol=1e-9)
        assert _numbers(seq.deelbo.learned_values()) == pytest.approx(
            _numbers(objective.deelbo.learned_values()), rel=1e-9
        )
    # the members really differ (learning rate, clipping): not one run copied three times
    finals = [r.final_loss for r in outcomes if isinstance(r, od.train.TrainResult)]
    assert len(set(finals)) == 3


def test_cifar_resnet20_members_equal_their_sequential_runs_in_float64() -> None:
    """The Split-CIFAR network (BatchNorm, residual blocks, in-place ReLU) under vmap, with the image augmentation."""
    built = od.models.build_backbone("cifar-resnet20", 5, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    augment = od.data.DeviceAugment(train=True)

    def transform(batch: torch.Tensor) -> torch.Tensor:
        return augment(batch).double()

    def objective() -> DEELBoObjective:
        model = copy.deepcopy(built.model).double()
        groups = od.bayes.ParameterGroups.split(model, built.head_prefixes)
        body = groups.flat(dict(model.named_parameters()), "body").detach().clone()
        return DEELBoObjective(DEELBo(model, 16, IsotropicGaussian(body), head=groups, init_sigma=1e-2))

    base = TrainConfig(lr=0.1, steps=3, batch_size=8, log_every=1, progress=False, device="cpu")
    configs = [base, dataclasses.replace(base, lr=0.01, clip_norm=0.5)]
    sequential = []
    for config in configs:
        alone = objective()
        train_model(alone, x, y, config, transform=transform)
        sequential.append(alone)
    members = [objective() for _ in configs]
    outcomes = train_batched(members, x, y, configs, transform=transform)
    assert all(isinstance(o, od.train.TrainResult) for o in outcomes)
    for alone, member in zip(sequential, members, strict=True):
        for model in (alone.model, member.model):
            torch.manual_seed(0)  # the augmentation's draws, as od.fit's recalibration seeds them
            recalibrate_batchnorm(model, x, transform=transform)
        for (name, a), b in zip(alone.state_dict().items(), member.state_dict().values(), strict=True):
            assert torch.allclose(a.double(), b.double(), rtol=1e-8, atol=1e-11), name


def test_a_diverging_member_stops_alone_and_the_others_train_on() -> None:
    x, y = _data()
    base = _configs()[0]
    configs = [base, dataclasses.replace(base, lr=1e6, clip_norm=None)]
    objectives = [_objective(_build("dropout")) for _ in configs]
    outcomes = train_batched(objectives, x, y, configs)
    assert isinstance(outcomes[1], TrainingDiverged)
    alone = _objective(_build("dropout"))
    result = train_model(alone, x, y, base)
    assert isinstance(outcomes[0], od.train.TrainResult)
    assert math.isclose(outcomes[0].final_loss, result.final_loss, rel_tol=1e-9)


def test_a_pruned_member_stops_alone() -> None:
    class PruneTrialOne(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return trial.number == 1

    study = optuna.create_study(pruner=PruneTrialOne())
    trials = [study.ask() for _ in range(2)]
    x, y = _data()
    configs = [dataclasses.replace(c, eval_every=4) for c in _configs()[:2]]
    outcomes = train_batched([_objective(_build("dropout")) for _ in configs], x, y, configs, trials=trials)
    assert isinstance(outcomes[0], od.train.TrainResult)
    assert isinstance(outcomes[1], optuna.TrialPruned)
    assert "step 4" in str(outcomes[1])


def test_obstacles_are_named() -> None:
    configs = _configs()[:2]
    model = _build("dropout")
    shared = _objective(model)
    assert "own copy" in str(batching_obstacle([shared, shared], configs))
    assert "differ in ['steps']" in str(
        batching_obstacle(
            [_objective(_build("dropout")) for _ in range(2)], [configs[0], dataclasses.replace(configs[1], steps=5)]
        )
    )
    groups = od.bayes.ParameterGroups.split(model, ("head.",))
    body = groups.flat(dict(model.named_parameters()), "body").detach()
    map_objective = MAPObjective(model, groups, IsotropicGaussian(body), 1e-3)
    assert "only DE-ELBo" in str(batching_obstacle([map_objective, _objective(_build("dropout"))], configs))
    other = _build("dropout")
    with torch.no_grad():
        other.body[0].weight.requires_grad_(False)
    assert "differ" in str(batching_obstacle([_objective(_build("dropout")), _objective(other)], configs))
    with pytest.raises(BatchingUnsupported, match="differ in"):
        train_batched([_objective(_build("dropout")), _objective(other)], *_data(), configs)


class ItemInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h / float(h.abs().max()))  # a host read: impossible under vmap


def test_a_model_that_cannot_run_under_vmap_is_named_before_anything_trains() -> None:
    torch.manual_seed(0)
    objectives = [_objective(ItemInForward().to(F64)) for _ in range(2)]
    before = [p.detach().clone() for p in objectives[0].parameters()]
    with pytest.raises(BatchingUnsupported, match="vmap"):
        probe_batched_forward(objectives, _data()[0], _configs()[0])
    assert all(torch.equal(a, b) for a, b in zip(before, objectives[0].parameters(), strict=True))


def test_fit_deelbo_batched_equals_fit_deelbo_on_digits(tiny_digits_task: od.TaskSpec) -> None:
    task = dataclasses.replace(tiny_digits_task, steps=6)
    lrs = [0.03, 0.01]
    runs = fit_deelbo_batched(task, lrs)
    for lr, run in zip(lrs, runs, strict=True):
        assert isinstance(run, tuple)
        objective, result = run
        alone, alone_result = fit_deelbo(task, lr)
        assert math.isclose(result.final_loss, alone_result.final_loss, rel_tol=1e-4)
        assert _numbers(objective.deelbo.learned_values()) == pytest.approx(
            _numbers(alone.deelbo.learned_values()), rel=1e-3
        )
        for a, b in zip(alone.state_dict().values(), objective.state_dict().values(), strict=True):  # BN recalibrated
            assert torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-5)


def _search(
    task: od.TaskSpec, batched: str, name: str
) -> tuple[od.tuning.StrategyResult, list[optuna.trial.FrozenTrial]]:
    storage = optuna.storages.InMemoryStorage()
    strategy = DEELBoStrategy([0.03, 0.01, 0.003], batched=batched)
    result = od.tuning.run_strategy(strategy, task, storage, name)
    return result, optuna.load_study(study_name=name, storage=storage).trials


def test_the_batched_search_writes_the_sequential_searchs_trials(tiny_digits_task: od.TaskSpec) -> None:
    task = dataclasses.replace(tiny_digits_task, steps=6)
    sequential, seq_trials = _search(task, "off", "seq")
    batched, bat_trials = _search(task, "on", "bat")
    assert [t.params for t in seq_trials] == [t.params for t in bat_trials]
    assert [t.state for t in bat_trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for a, b in zip(seq_trials, bat_trials, strict=True):
        assert b.value == pytest.approx(a.value, rel=1e-4)
        assert b.user_attrs[A.BATCHED_MEMBERS] == 3 and b.user_attrs[A.BATCHED_WITH] == [0, 1, 2]
        assert A.BATCHED_MEMBERS not in a.user_attrs
        extra = set(b.user_attrs) - set(a.user_attrs)
        assert extra == {A.BATCHED_MEMBERS, A.BATCHED_WITH}
        for key in (A.LEARNED_LAMBDA, A.LEARNED_SIGMA, A.LEARNED_TAU, A.LEARNED_WEIGHT_DECAY, A.TRAIN_LOSS):
            assert b.user_attrs[key] == pytest.approx(a.user_attrs[key], rel=1e-3), key
        assert b.user_attrs[A.TEST_ACCURACY] == pytest.approx(a.user_attrs[A.TEST_ACCURACY], abs=2e-3)
    assert batched.best_params == sequential.best_params
    assert batched.n_trials == sequential.n_trials == 3
    assert batched.test_accuracy == pytest.approx(sequential.test_accuracy, abs=2e-3)


def test_batched_on_falls_back_with_a_warning_where_it_cannot_batch(tiny_digits_task: od.TaskSpec) -> None:
    recipe = dataclasses.replace(tiny_digits_task.deelbo_recipe, bn_recalibration=False)
    task = dataclasses.replace(tiny_digits_task, recipe=recipe)
    with pytest.warns(RuntimeWarning, match="bn_recalibration=False"):
        _, trials = _search(task, "on", "fallback")
    assert all(A.BATCHED_MEMBERS not in t.user_attrs for t in trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_auto_batches_only_on_cuda(tiny_digits_task: od.TaskSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    task = dataclasses.replace(tiny_digits_task, device=None)  # CUDA where there is one
    assert not DEELBoStrategy(batched="auto").batches(dataclasses.replace(tiny_digits_task, device="cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not DEELBoStrategy(batched="auto").batches(task)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert DEELBoStrategy(batched="auto").batches(task)
    monkeypatch.undo()
    assert DEELBoStrategy(batched="on").batches(tiny_digits_task)
    with pytest.raises(od.ConfigError, match="batched mode"):
        DEELBoStrategy(batched="yes")


def test_compare_batched_on_writes_batched_trials_and_plan_only_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'batched.db'}"
    tiny = ["--steps", "6", "--pretrain-steps", "10", "--n-train", "50", "--no-progress", "--report", ""]
    assert main(["compare", "--storage", url, "--strategies", "deelbo", "--batched", "on", *tiny]) == 0
    trials = optuna.load_study(study_name="digits-N50-seed0/l2-sp/deelbo", storage=url).trials
    assert [t.user_attrs[A.BATCHED_MEMBERS] for t in trials] == [4, 4, 4, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert "deelbo" in capsys.readouterr().out
    assert main(["compare", "--plan-only", "--storage", url, "--batched", "on", *tiny]) == 2
    assert "--batched on: workers take planned trials one at a time" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::optuna_deelbo.PlaceholderWarning")  # the stub writes no learned values
def test_an_error_after_training_fails_the_untold_trials_instead_of_leaving_them_running(
    tiny_digits_task: od.TaskSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna_deelbo.tuning import _batched

    calls = []

    def broken(*args: object) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("test evaluation failed")
        return 1.0

    monkeypatch.setattr(_batched, "deelbo_outcome", broken)
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(RuntimeError, match="test evaluation failed"):
        od.tuning.run_strategy(DEELBoStrategy([0.03, 0.01, 0.003], batched="on"), tiny_digits_task, storage, "err")
    states = [t.state for t in optuna.load_study(study_name="err", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.FAIL]


def test_a_batched_search_refuses_a_study_without_deelbo_sampler_before_taking_a_trial(
    tiny_digits_task: od.TaskSpec,
) -> None:
    from optuna_deelbo.tuning._batched import run_batched_trials
    from optuna_deelbo.tuning.workers import PlannedStudy

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="map")
    study.enqueue_trial({"lr": 0.01})
    with pytest.raises(od.ConfigError, match="DEELBoSampler"):
        run_batched_trials(PlannedStudy.of(study, storage), tiny_digits_task, lambda t: 0.01)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.WAITING]  # nothing taken, nothing lost
