"""bayes/_loop_health.py: LoopHealth applies od.fit's divergence rule to an own loop's NLLs."""

from __future__ import annotations

import math

import pytest
import torch

from optuna_deelbo import TrainingDiverged
from optuna_deelbo.bayes._loop_health import EMA_WEIGHT, LoopHealth
from optuna_deelbo.train import DivergenceRule


def test_a_steady_run_passes_and_the_running_nll_is_a_moving_average() -> None:
    health = LoopHealth(DivergenceRule())
    for value in (2.0, 1.0, 1.0):
        health.record(torch.tensor(value))
    health.check(max_sigma=0.01)
    expected = 2.0 + EMA_WEIGHT * (1.0 - 2.0)
    expected = expected + EMA_WEIGHT * (1.0 - expected)
    assert math.isclose(float(health._running), expected, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("values", "sigma", "message"),
    [
        ((1.0, math.nan, 1.0), 0.01, r"non-finite training NLL after 3 training steps"),
        ((1.0,), math.inf, r"non-finite sigma"),
        ((1.0,), 1e6, r"exploding sigma"),
        ((1.0, *(1e4,) * 60), 0.01, r"diverging: running training NLL"),
    ],
)
def test_each_kind_of_divergence_is_named(values: tuple[float, ...], sigma: float, message: str) -> None:
    health = LoopHealth(DivergenceRule())
    for value in values:
        health.record(torch.tensor(value))
    with pytest.raises(TrainingDiverged, match=message):
        health.check(max_sigma=sigma)


def test_batchnorm_is_stale_after_training_until_recalibrated() -> None:
    health = LoopHealth(DivergenceRule())
    assert not health.batchnorm_stale
    health.record(torch.tensor(1.0))
    assert health.batchnorm_stale
    health.recalibrated_at = health.steps
    assert not health.batchnorm_stale
