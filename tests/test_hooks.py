"""train/_hooks.py: the loop's hooks run at their named points -- callbacks every step, checkpoints never at the
last step, the step's log with the scheduled weight decay, and early stopping restoring the best weights."""

from __future__ import annotations

import torch
from torch import nn

import optuna_deelbo as od
from optuna_deelbo.train import CheckpointHook, TrainConfig, train_model
from optuna_deelbo.train._hooks import CheckpointWriter, TrainHook


def _objective() -> od.bayes.MAPObjective:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    groups = od.bayes.ParameterGroups.split(model, ("2.",))
    return od.bayes.MAPObjective(model, groups, od.IsotropicGaussian.zero(groups.numel(model, "body")), 1e-3)


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_step_callbacks_every_step_and_checkpoints_every_k_but_the_last() -> None:
    steps, saved = [], []
    config = TrainConfig(lr=0.05, steps=9, batch_size=8, progress=False, device="cpu", log_every=3)
    train_model(
        _objective(), *_data(), config, on_step=steps.append, checkpoint=CheckpointHook(3, lambda s: saved.append(s))
    )
    assert steps == list(range(1, 10))
    assert [s["step"] for s in saved] == [3, 6]  # not 9: the run is finishing


def test_a_schedule_sets_the_weight_decay_each_row_logs() -> None:
    config = TrainConfig(lr=0.05, steps=6, batch_size=8, progress=False, device="cpu", log_every=1)
    result = train_model(_objective(), *_data(), config, weight_decay_schedule=od.train.pull_down((1e-2, 1e-4), 3))
    logged = torch.tensor([row["weight_decay"] for row in result.history])  # logged as float32 tensors
    assert torch.allclose(logged, torch.tensor([1e-2] * 3 + [1e-4] * 3))


def test_early_stopping_keeps_the_best_validation_weights() -> None:
    x, y = _data(48)
    objective = _objective()
    config = TrainConfig(lr=2.0, steps=40, batch_size=8, progress=False, device="cpu", patience=2, eval_every=2)
    result = train_model(objective, x[:24], y[:24], config, val=(x[24:], y[24:]))
    assert result.best_step is not None and result.stopped_step is not None
    best_nll = min(v for s, v, _ in result.val_history)
    assert next(s for s, v, _ in result.val_history if v == best_nll) == result.best_step
    restored = od.evaluate(objective.model, x[24:], y[24:]).nll
    assert abs(restored - best_nll) < 1e-5


def test_the_base_hook_does_nothing() -> None:
    hook = TrainHook()
    assert hook.end_of_step(1) is False and hook.state() == {}
    assert issubclass(CheckpointWriter, TrainHook)
