"""bayes/_wiring.py: WiringCheck on bare parameters -- lopsided updates and an optimizer's own weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optuna_deelbo import ConfigError
from optuna_deelbo.bayes._wiring import PATIENCE, WiringCheck, optimizer_groups


def _params() -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(2))


def _step(*params: nn.Parameter) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(0.1)


def test_sigma_left_out_is_an_error_after_patience_lopsided_calls() -> None:
    weight, rho = _params()
    check = WiringCheck({"body": [weight], "head": []}, [rho])
    check.observe()
    for _ in range(PATIENCE - 1):
        _step(weight)
        check.observe()
    _step(weight)
    with pytest.raises(ConfigError, match=r"posterior std \(sigma\) does not"):
        check.observe()
    assert check.done


def test_both_moving_ends_the_check_and_steps_that_move_nothing_do_not_count() -> None:
    weight, rho = _params()
    check = WiringCheck({"body": [weight]}, [rho])
    check.observe()
    for _ in range(5):
        check.observe()  # lr warm-up from 0 / a skipped AMP step: nothing moved
    assert not check.done
    _step(weight, rho)
    check.observe()
    assert check.done


def test_weights_left_out_names_the_group() -> None:
    weight, rho = _params()
    check = WiringCheck({"body": [weight]}, [rho])
    check.observe()
    with pytest.raises(ConfigError, match=r"the body weights do not"):
        for _ in range(PATIENCE):
            _step(rho)
            check.observe()


def test_an_optimizers_own_weight_decay_is_refused_before_its_step() -> None:
    weight, rho = _params()
    check = WiringCheck({"body": [weight]}, [rho])
    optimizer = torch.optim.AdamW([weight, rho], lr=0.1)  # weight_decay=0.01 by default
    weight.grad, rho.grad = torch.ones(3), torch.ones(2)
    with pytest.raises(ConfigError, match=r"weight_decay=0.01 .*AdamW's default"):
        optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3))  # refused before anything moved
    assert check.done
    torch.optim.AdamW([weight], lr=0.1).step()  # closed: no longer watched


def test_optimizer_groups_hold_every_parameter_once_without_decay() -> None:
    weight, rho = _params()
    groups = optimizer_groups([weight], [rho], None, torch.optim.SGD)
    held = [p for g in groups for p in g["params"]]
    assert len(held) == 2 and {id(p) for p in held} == {id(weight), id(rho)}
    assert all(g.get("weight_decay", 0) == 0 for g in groups)
