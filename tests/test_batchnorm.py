"""BatchNorm recalibration with the mean weights, against a direct computation of the statistics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import optuna_deelbo as od

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def test_recalibrated_statistics_equal_the_direct_computation() -> None:
    net = _net()
    x = torch.randn(12, 1, 6, 6) * 2 + 1
    scale = lambda t: t * 0.5  # noqa: E731 - the transform is applied before the forward pass
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.fill_(7.0)  # stale statistics from "training"
        bn.running_var.fill_(9.0)
        assert od.recalibrate_batchnorm(net, x, transform=scale, batch_size=4) == 1
        conv = net[0](scale(x))  # (12, 3, 4, 4): the BatchNorm layer's inputs
        batches = conv.split(4)
        want_mean = conv.mean(dim=(0, 2, 3))
        want_var = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert net.training  # its mode before the call
    net.eval()
    od.recalibrate_batchnorm(net, x)
    assert not net.training


def test_weights_do_not_change_and_models_without_batchnorm_are_left_alone() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.named_parameters()}
    od.recalibrate_batchnorm(net, torch.randn(5, 1, 6, 6))
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters())
    linear = nn.Linear(3, 2)
    assert od.recalibrate_batchnorm(linear, torch.randn(4, 3)) == 0


def test_recalibration_option_changes_a_deelbo_runs_statistics() -> None:
    task, _ = od.digits_task(40, steps=20, pretrain_steps=20, recipe="v0.1")
    assert not task.deelbo_recipe.bn_recalibration and od.RECIPES["default"].bn_recalibration
    plain = od.tuning.trials.fit_deelbo(task, 0.1)[0].model
    recalibrated_task = dataclasses.replace(task, recipe=od.DEELBoRecipe(bn_recalibration=True))
    recal = od.tuning.trials.fit_deelbo(recalibrated_task, 0.1)[0].model
    direct = od.tuning.trials.fit_deelbo(task, 0.1)[0].model
    od.recalibrate_batchnorm(direct, task.train.x)
    for b, c in zip(recal.buffers(), direct.buffers(), strict=True):
        torch.testing.assert_close(b, c)  # the option is exactly the post-hoc call
    assert any(not torch.equal(a, b) for a, b in zip(plain.buffers(), recal.buffers(), strict=True))


def test_bad_input() -> None:
    with pytest.raises(od.ConfigError, match="empty data set"):
        od.recalibrate_batchnorm(_net(), torch.zeros(0, 1, 6, 6))
    with pytest.raises(od.ConfigError, match="batch_size must be a positive integer"):
        od.recalibrate_batchnorm(_net(), torch.zeros(2, 1, 6, 6), batch_size=0)


def test_recalibration_uses_the_training_augmentation() -> None:
    """The weights were trained on augmented inputs; their statistics are what the mean weights need."""
    from optuna_deelbo.tuning._fit import recalibrate_for_mean_weights

    x = torch.randn(16, 1, 6, 6)
    task = od.TaskSpec(
        name="bn",
        model_factory=_net,
        train=od.Split(x, torch.arange(16) % 2),
        head_prefixes=("4.",),
        train_transform=lambda t: t * 3 + 1,
        eval_transform=lambda t: t,
        progress=False,
    )
    model, direct = task.build_model(), task.build_model()
    assert recalibrate_for_mean_weights(task, model) == 1
    od.recalibrate_batchnorm(direct, x, transform=lambda t: t * 3 + 1)
    torch.testing.assert_close(model[1].running_mean, direct[1].running_mean)
    torch.testing.assert_close(model[1].running_var, direct[1].running_var)
