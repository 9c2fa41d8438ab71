"""train/_state.py: LoopState -- input checks, the step, and a snapshot that a fresh state continues from exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optuna_deelbo as od
from optuna_deelbo.train import TrainConfig
from optuna_deelbo.train._state import LoopState


def _objective(seed: int = 0) -> od.bayes.MAPObjective:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    groups = od.bayes.ParameterGroups.split(model, ("2.",))
    return od.bayes.MAPObjective(model, groups, od.IsotropicGaussian.zero(groups.numel(model, "body")), 1e-3)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(24, 4, generator=gen), torch.randint(0, 3, (24,), generator=gen)


CONFIG = TrainConfig(lr=0.05, steps=10, batch_size=8, progress=False, device="cpu")


def test_the_inputs_are_checked_before_anything_is_built() -> None:
    x, y = _data()
    with pytest.raises(od.ConfigError, match=r"labels must have shape \(24,\)"):
        LoopState.start(_objective(), x, y[:5], CONFIG, fingerprinted=False)
    with pytest.raises(od.ConfigError, match=r"int64 class indices"):
        LoopState.start(_objective(), x, y.float(), CONFIG, fingerprinted=False)


def test_a_snapshot_continues_in_a_fresh_state_as_if_never_stopped() -> None:
    x, y = _data()
    reference = LoopState.start(_objective(), x, y, CONFIG, fingerprinted=True)
    losses = [float(reference.step(None, None).loss) for _ in range(6)]
    first = LoopState.start(_objective(), x, y, CONFIG, fingerprinted=True)
    for _ in range(3):
        first.step(None, None)
    state = first.snapshot(3, {})
    resumed = LoopState.start(_objective(seed=5), x, y, CONFIG, fingerprinted=True)  # other initial weights
    resumed.restore(state)
    assert resumed.first_step == 4
    assert [float(resumed.step(None, None).loss) for _ in range(3)] == losses[3:]


def test_a_snapshot_of_another_run_is_refused() -> None:
    x, y = _data()
    state = LoopState.start(_objective(), x, y, CONFIG, fingerprinted=True).snapshot(1, {})
    other = TrainConfig(lr=0.01, steps=10, batch_size=8, progress=False, device="cpu")
    with pytest.raises(od.CheckpointError, match=r"another run .*lr"):
        LoopState.start(_objective(), x, y, other, fingerprinted=True).restore(state)
