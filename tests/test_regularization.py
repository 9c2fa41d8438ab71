"""The classic regularizers wired into training: config, structural hooks, penalties, schedules, early stopping.

The pure pieces have their own files (test_penalties, test_mixing, test_schedules,
test_early_stopping); this one checks that the training loop, the objectives, ``fit`` /
``retrain`` and the schedule strategies use them as specified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from pathlib import Path

import optuna
import pytest
import torch

import optuna_deelbo as od
from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._objectives import MAPObjective
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import IsotropicGaussian
from optuna_deelbo.cli import main
from optuna_deelbo.data._splits import Split
from optuna_deelbo.models._backbones import CifarResNet, build_backbone
from optuna_deelbo.models._small_cnn import SmallCNN
from optuna_deelbo.regularizers._penalties import Penalty
from optuna_deelbo.regularizers._regularization import Regularization
from optuna_deelbo.regularizers._structural import residual_blocks, set_head_dropout, set_stochastic_depth
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.train._schedules import AdaptiveFeedback, pull_down
from optuna_deelbo.train._training import TrainConfig, evaluate, train_model
from optuna_deelbo.tuning._fit import fit_map, retrain
from optuna_deelbo.tuning.strategies.schedules import replay_schedule
from optuna_deelbo.tuning.strategies.tpe import TPERegStrategy, suggest_regularization

torch.set_num_threads(1)


def _images(n: int, seed: int = 0, n_classes: int = 3) -> Split:
    """Class-dependent 8x8 single-channel images (learnable in a few steps)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.5 + y.view(-1, 1, 1, 1).float()
    return Split(x, y)


def _task(**kw: object) -> TaskSpec:
    args: dict[str, object] = {
        "name": "toy",
        "model_factory": lambda: SmallCNN(3, width=4),
        "train": _images(60),
        "test": _images(30, seed=1),
        "steps": 30,
        "batch_size": 10,
        "progress": False,
        "device": "cpu",
    }
    args.update(kw)
    return TaskSpec(**args)  # type: ignore[arg-type]


# --- Regularization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"penalty": "l3"}, "unknown penalty"),
        ({"penalty": "l1", "penalty_strength": -1.0}, "penalty_strength"),
        ({"dropout": 1.0}, "dropout must be a probability"),
        ({"stochastic_depth": -0.1}, "stochastic_depth must be a probability"),
        ({"label_smoothing": 1.5}, "smoothing"),
        ({"mixup_alpha": -1.0}, "mixup"),
        ({"retrain": "never"}, "unknown retrain rule"),
    ],
)
def test_regularization_rejects_bad_settings(kw: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Regularization(**kw)  # type: ignore[arg-type]


def test_regularization_is_off_by_default() -> None:
    reg = Regularization()
    assert reg.penalty_fn is None and reg.mixing(3) is None
    model = SmallCNN(3, width=4)
    before = dict(model.state_dict())
    reg.apply_to_model(model, ("head.",))
    assert not hasattr(model.head, "head_dropout") and model.state_dict().keys() == before.keys()


def test_suggest_regularization_takes_the_trials_values() -> None:
    trial = optuna.trial.FixedTrial(
        {
            "penalty": "l-half",
            "penalty_strength": 1e-4,
            "use_dropout": True,
            "dropout": 0.2,
            "use_mixup_alpha": True,
            "mixup_alpha": 0.4,
            "restart_period": 25,
        }
    )
    reg = suggest_regularization(trial, ("penalty", "dropout", "mixup_alpha", "restart_period"))
    assert reg == Regularization(
        penalty="l-half", penalty_strength=1e-4, dropout=0.2, mixup_alpha=0.4, restart_period=25
    )
    assert reg.penalty_fn == Penalty("l-half", 1e-4)
    off = suggest_regularization(
        optuna.trial.FixedTrial(
            {"penalty": "none", "restart_period": 0, "use_dropout": False, "use_mixup_alpha": False}
        ),
        ("penalty", "dropout", "mixup_alpha", "restart_period"),
    )
    assert off == Regularization()  # every regularizer exactly off: the plain search is inside the space
    with pytest.raises(ConfigError, match="unknown regularizer"):
        suggest_regularization(trial, ("dropout", "weight_noise"))


def test_tpe_searches_regularizers_in_a_real_study() -> None:
    task = _task(steps=6)

    def objective(trial: optuna.Trial) -> float:
        reg = suggest_regularization(trial, ("penalty", "dropout", "label_smoothing", "mixup_alpha"))
        run = TaskSpec(**{**_task_kwargs(task), "regularization": reg})
        _, result = fit_map(run, 0.05, 1e-4, run.train)
        return result.final_loss

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    study.optimize(objective, n_trials=4)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    assert all(math.isfinite(t.value) for t in study.trials if t.value is not None)


def _task_kwargs(task: TaskSpec) -> dict[str, object]:
    return {
        "name": task.name,
        "model_factory": task.model_factory,
        "train": task.train,
        "test": task.test,
        "steps": task.steps,
        "batch_size": task.batch_size,
        "progress": False,
        "device": "cpu",
    }


# --- structural: head dropout and stochastic depth ---------------------------------------------


def test_head_dropout_acts_in_training_only_and_keeps_names() -> None:
    torch.manual_seed(0)
    model = SmallCNN(3, width=4)
    reference = SmallCNN(3, width=4)
    reference.load_state_dict(model.state_dict())
    names = [n for n, _ in model.named_parameters()]
    set_head_dropout(model, ("head.",), 0.5)
    assert [n for n, _ in model.named_parameters()] == names
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(16, 1, 8, 8)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x), reference(x))
    model.train(), reference.train()
    assert not torch.allclose(model(x), reference(x))
    set_head_dropout(model, ("head.",), 0.0)  # calling again changes p, no second hook
    torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(ConfigError, match="no head module"):
        set_head_dropout(model, ("classifier.",), 0.1)
    with pytest.raises(ConfigError, match="probability"):
        set_head_dropout(model, ("head.",), 1.0)


def test_stochastic_depth_linear_rule_on_cifar_resnet() -> None:
    torch.manual_seed(0)
    model = CifarResNet(5, depth=8)  # 3 blocks
    keys = model.state_dict().keys()
    assert set_stochastic_depth(model, 0.6) == 3
    assert [b.residual_drop.p for b in residual_blocks(model)] == pytest.approx([0.2, 0.4, 0.6])
    assert model.state_dict().keys() == keys
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    plain = model(x)
    torch.testing.assert_close(model(x), plain)
    model.train()
    set_stochastic_depth(model, 0.99)
    drops = [bool((model.features(x) - model.features(x)).abs().max() > 0) for _ in range(3)]
    assert any(drops), "with p near 1 residual branches must be dropped at random in training"
    set_stochastic_depth(model, 0.0)
    a, b = model.features(x), model.features(x)
    # without drops the only randomness left is none: BatchNorm in train mode is deterministic
    torch.testing.assert_close(a, b)


def test_stochastic_depth_on_torchvision_backbones_and_refusal() -> None:
    resnet = build_backbone("resnet18", 5).model
    assert set_stochastic_depth(resnet, 0.2) == 8
    convnext = build_backbone("convnext_tiny", 5).model
    n = set_stochastic_depth(convnext, 0.3)
    probs = [b.stochastic_depth.p for b in residual_blocks(convnext)]
    assert n == 18 and probs[-1] == pytest.approx(0.3) and probs[0] == pytest.approx(0.3 / 18)
    with pytest.raises(ConfigError, match="no"):
        set_stochastic_depth(SmallCNN(3), 0.1)


def test_task_with_stochastic_depth_on_a_model_without_blocks_is_refused_early() -> None:
    with pytest.raises(ConfigError, match="residual blocks"):
        _task(regularization=Regularization(stochastic_depth=0.1))


# --- penalties in the objectives -----------------------------------------------------------------


def test_map_loss_adds_the_penalty_towards_the_prior_mean() -> None:
    torch.manual_seed(0)
    model = SmallCNN(3, width=4)
    groups = ParameterGroups.split(model, ("head.",))
    params = dict(model.named_parameters())
    body = groups.flat(params, "body").detach()
    mean = body + 0.1  # prior mean away from the weights so the L1 term is not zero
    penalty = Penalty("l1", 1e-3)
    with_pen = MAPObjective(model, groups, IsotropicGaussian(mean), 1e-2, penalty=penalty)
    without = MAPObjective(model, groups, IsotropicGaussian(mean), 1e-2)
    data = _images(10)
    model.eval()
    a, b = with_pen(data.x, data.y), without(data.x, data.y)
    expected = 1e-3 * (0.1 * body.numel() + groups.flat(params, "head").abs().sum())
    torch.testing.assert_close(a.loss - b.loss, expected.to(a.loss.dtype), rtol=1e-4, atol=1e-6)


def test_soft_targets_train_and_label_smoothing_raises_the_nll_floor() -> None:
    plain = _task(steps=40)
    smooth = _task(steps=40, regularization=Regularization(label_smoothing=0.3))
    _, a = fit_map(plain, 0.1, 1e-4, plain.train)
    _, b = fit_map(smooth, 0.1, 1e-4, smooth.train)
    # the smoothed targets' entropy bounds the training loss from below
    floor = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1))
    assert b.final_nll > floor - 1e-3 and a.final_nll < b.final_nll


# --- schedules in the loop -----------------------------------------------------------------------


def _map(task: TaskSpec) -> MAPObjective:
    model = task.build_model()
    return MAPObjective(model, task.groups(model), task.body_prior(model), 1.0)


def test_pull_down_sets_the_weight_decay_at_every_step() -> None:
    task = _task()
    schedule = pull_down((1e-2, 1e-3, 1e-4), 4)
    config = TrainConfig(lr=0.05, steps=12, batch_size=10, log_every=1, progress=False, device="cpu")
    result = train_model(_map(task), task.train.x, task.train.y, config, weight_decay_schedule=schedule)
    assert [r["weight_decay"] for r in result.history] == pytest.approx([1e-2] * 4 + [1e-3] * 4 + [1e-4] * 4)


def test_adaptive_rule_updates_every_k_steps_with_measured_accuracies() -> None:
    task = _task()
    train_split, val_split = task.train_val
    rule = AdaptiveFeedback(1e-4, every=5, margin=0.05, close=0.01)
    config = TrainConfig(lr=0.05, steps=20, batch_size=10, log_every=5, progress=False, device="cpu")
    objective = _map(task)
    train_model(
        objective, train_split.x, train_split.y, config, val=(val_split.x, val_split.y), weight_decay_schedule=rule
    )
    assert [h[0] for h in rule.history] == [5, 10, 15, 20]
    for _, lam, train_acc, val_acc in rule.history:
        assert 0 <= train_acc <= 1 and 0 <= val_acc <= 1 and 1e-7 <= lam <= 1e-1
    with pytest.raises(ConfigError, match="validation"):
        train_model(_map(task), train_split.x, train_split.y, config, weight_decay_schedule=AdaptiveFeedback(1e-4))


def test_schedules_need_a_map_objective() -> None:
    from optuna_deelbo.bayes._objectives import DEELBoObjective

    task = _task()
    model = task.build_model()
    objective = DEELBoObjective(DEELBo(model, 60, task.body_prior(model), head=task.groups(model)))
    config = TrainConfig(lr=0.05, steps=2, batch_size=10, progress=False, device="cpu")
    with pytest.raises(ConfigError, match="MAP objective"):
        train_model(objective, task.train.x, task.train.y, config, weight_decay_schedule=pull_down((1e-3,), 2))


def test_replay_schedule_reproduces_an_adaptive_trajectory() -> None:
    trajectory = [[1, 1e-4], [11, 2e-4], [31, 1e-4]]
    replay = replay_schedule(trajectory, 10)
    assert [replay.value_at(s) for s in (1, 10, 11, 30, 31, 40, 55)] == [1e-4, 1e-4, 2e-4, 2e-4, 1e-4, 1e-4, 1e-4]


def test_warm_restarts_jump_the_learning_rate_back_up() -> None:
    task = _task()
    config = TrainConfig(lr=0.1, steps=30, batch_size=10, log_every=1, progress=False, device="cpu", restart_period=10)
    result = train_model(_map(task), task.train.x, task.train.y, config)
    lrs = {int(r["step"]): r["lr"] for r in result.history}
    assert lrs[10] == pytest.approx(0.1)  # the first cycle (10 steps) ended: back to the initial lr
    assert lrs[9] < 0.01 and lrs[5] < lrs[4]
    assert lrs[29] < lrs[20]  # second cycle lasts 20 steps (T_mult = 2)
    with pytest.raises(ConfigError, match="restart_period"):
        TrainConfig(lr=0.1, cosine=False, restart_period=10)


# --- early stopping and the two retraining rules ---------------------------------------------------


def test_early_stopping_restores_the_best_step_and_stops_after_patience() -> None:
    data = _images(80)
    gen = torch.Generator().manual_seed(3)
    val = Split(_images(40, seed=5).x, torch.randint(0, 3, (40,), generator=gen))  # labels unrelated to inputs
    task = _task(train=data, steps=200)
    objective = _map(task)
    config = TrainConfig(
        lr=0.1, steps=200, batch_size=10, eval_every=5, patience=3, progress=False, device="cpu", cosine=False
    )
    result = train_model(objective, data.x, data.y, config, val=(val.x, val.y))
    assert result.best_step is not None and result.stopped_step < 200
    steps = [s for s, _, _ in result.val_history]
    nlls = {s: nll for s, nll, _ in result.val_history}
    assert result.best_step == min(steps, key=lambda s: nlls[s])
    assert result.stopped_step == result.best_step + 3 * 5
    restored = evaluate(objective.model, val.x, val.y)
    assert restored.nll == pytest.approx(nlls[result.best_step], rel=1e-5)
    assert result.train_loss_at_best is not None and math.isfinite(result.train_loss_at_best)
    with pytest.raises(ConfigError, match="validation set"):
        train_model(_map(task), data.x, data.y, config)


@pytest.mark.parametrize("rule", ["steps", "continue"])
def test_retrain_rules_after_early_stopping(rule: str) -> None:
    task = _task(steps=60, regularization=Regularization(patience=2, retrain=rule))  # type: ignore[arg-type]
    outcome = retrain(task, 0.05, 1e-4)
    assert outcome.test is not None and 0 <= outcome.test.accuracy <= 1
    assert math.isfinite(outcome.train_loss)


# --- the schedule strategies end to end ------------------------------------------------------------


def test_compare_runs_the_schedule_strategies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    out = io.StringIO()
    args = ["compare", "--storage", url, "--report", "", "--strategies", "deelbo,tpe-reg,pulldown,pullup,adaptive"]
    with contextlib.redirect_stdout(out):
        status = main(
            [*args, "--steps", "20", "--pretrain-steps", "20", "--n-train", "50", "--tpe-trials", "3", "--no-progress"]
        )
    assert status == 0
    rows = {m.group(1) for m in re.finditer(r"^\| ([\w-]+) \| (\d+) \|", out.getvalue(), re.M)}
    assert rows == {"deelbo", "tpe-reg", "pulldown", "pullup", "adaptive"}
    storage = optuna.storages.RDBStorage(url)
    for name in ("pulldown", "pullup", "adaptive"):
        study = optuna.load_study(study_name=f"digits-N50-seed0/l2-sp/{name}", storage=storage)
        assert len(study.trials) == 4 and study.user_attrs["time:retrain_s"] > 0
        for trial in study.trials:
            trajectory = trial.system_attrs["lambda:trajectory"]
            assert trajectory[0][0] == 1 and all(v >= 0 for _, v in trajectory)
    down = optuna.load_study(study_name="digits-N50-seed0/l2-sp/pulldown", storage=storage).trials[0]
    values = [v for _, v in down.system_attrs["lambda:trajectory"]]
    assert values == sorted(values, reverse=True) and len(values) > 1


def test_tpe_reg_searches_the_regularizers_and_retrains_the_winner_with_them() -> None:
    task = _task()
    strategy = TPERegStrategy(trials=4)
    storage = optuna.storages.InMemoryStorage()
    result = od.tuning.run_strategy(strategy, task, storage, "reg")
    study = optuna.load_study(study_name="reg", storage=storage)
    assert len(study.trials) == 4
    switched = ("dropout", "label_smoothing", "mixup_alpha", "cutmix_alpha")
    for trial in study.trials:
        assert {"lr", "weight_decay", "penalty", "restart_period", *(f"use_{n}" for n in switched)} <= set(trial.params)
        for name in switched:  # a value exactly when switched on
            assert (name in trial.params) == trial.params[f"use_{name}"]
    best = study.trials[study.user_attrs["best_trial"]]
    chosen = strategy.regularization_of(best.params)
    for name in switched:
        assert getattr(chosen, name) == best.params.get(name, 0.0)
    assert chosen.restart_period == (best.params["restart_period"] or None)
    assert chosen != Regularization(), "seed 0's winner uses a regularizer, so the retrain comparison below bites"
    assert result.best_params == best.params
    # the retrain is the winner's configuration with its regularizers (CPU runs are deterministic) ...
    lr, wd = best.params["lr"], best.params["weight_decay"]
    with_reg = retrain(dataclasses.replace(task, regularization=chosen), lr, wd)
    assert with_reg.test is not None and result.test_nll == pytest.approx(with_reg.test.nll, rel=1e-6)
    # ... and not the plain one
    plain = retrain(task, lr, wd)
    assert plain.test is not None and plain.test.nll != pytest.approx(with_reg.test.nll, rel=1e-6)


def test_tpe_reg_refuses_an_unknown_or_empty_search() -> None:
    with pytest.raises(ConfigError, match=r"unknown: \['l0'\]"):
        TPERegStrategy(regularizers=("dropout", "l0"))
    with pytest.raises(ConfigError, match="non-empty subset"):
        TPERegStrategy(regularizers=())
