"""Tests for :mod:`optuna_deelbo.train._divergence`: each failure mode ends a run (and a trial) with its reason.

A tiny body/head network on three separable 4-d blobs; every run takes well under a second.
"""

from __future__ import annotations

import math
import re

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import Tensor, nn

import optuna_deelbo as od
from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._objectives import DEELBoObjective, MAPObjective
from optuna_deelbo.bayes._posterior import ParameterGroups, WeightPosterior
from optuna_deelbo.bayes._priors import IsotropicGaussian
from optuna_deelbo.train._divergence import DIVERGENCE_KINDS, DivergenceMonitor, DivergenceRule
from optuna_deelbo.train._training import TrainConfig, train_model

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)))


def blobs(n: int = 60, seed: int = 0) -> od.Split:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return od.Split(torch.randn(n, 4, generator=gen) + 3.0 * torch.eye(4)[y], y)


def tiny_task(**kw: object) -> od.TaskSpec:
    args: dict[str, object] = {
        "name": "tiny",
        "model_factory": Tiny,
        "train": blobs(),
        "test": blobs(30, seed=1),
        "steps": 60,
        "batch_size": 16,
        "progress": False,
        "device": "cpu",
    }
    args.update(kw)
    return od.TaskSpec(**args)  # type: ignore[arg-type]


def config(**kw: object) -> TrainConfig:
    args: dict[str, object] = {"lr": 0.1, "steps": 60, "batch_size": 16, "progress": False, "device": "cpu"}
    args.update(kw)
    return TrainConfig(**args)  # type: ignore[arg-type]


def map_objective() -> MAPObjective:
    torch.manual_seed(0)
    model = Tiny()
    groups = ParameterGroups.split(model, ("head.",))
    return MAPObjective(model, groups, IsotropicGaussian.zero(groups.numel(model, "body")), 1e-3)


def deelbo_objective(init_sigma: float = 1e-3) -> DEELBoObjective:
    torch.manual_seed(0)
    model = Tiny()
    groups = ParameterGroups.split(model, ("head.",))
    body = groups.flat(dict(model.named_parameters()), "body").detach().clone()
    return DEELBoObjective(DEELBo(model, 60, IsotropicGaussian(body), head=groups, init_sigma=init_sigma))


# --- DivergenceRule / DivergenceMonitor -----------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"max_sigma": 0.0}, "max_sigma"),
        ({"max_sigma": math.inf}, "max_sigma"),
        ({"nll_factor": 1.0}, "nll_factor must be > 1"),
        ({"nll_factor": math.nan}, "nll_factor"),
        ({"patience": 0}, "divergence patience"),
        ({"min_reference": -1.0}, "min_reference"),
    ],
)
def test_rule_rejects_bad_limits(kw: dict[str, object], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        DivergenceRule(**kw)  # type: ignore[arg-type]


def test_train_config_rejects_a_non_rule() -> None:
    with pytest.raises(ConfigError, match="divergence must be a DivergenceRule"):
        TrainConfig(lr=0.1, divergence=10.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["loss", "nll", "lambda", "sigma"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_monitor_names_the_non_finite_value(key: str, bad: float) -> None:
    monitor = DivergenceMonitor(DivergenceRule(), lr=0.5)
    row = {"step": 20.0, "loss": 1.0, "nll": 1.0, "lambda": 1e-3, "sigma": 1e-3}
    monitor.check(20, row)  # finite: passes
    row[key] = bad
    with pytest.raises(TrainingDiverged, match=rf"^non-finite {key} at step 20 \(lr=0.5\)$"):
        monitor.check(20, row)


def test_monitor_nll_rule_needs_patience_consecutive_checks_and_resets() -> None:
    monitor = DivergenceMonitor(DivergenceRule(nll_factor=10.0, patience=3), lr=1.0)
    monitor.start(torch.tensor(2.0))
    monitor.start(torch.tensor(0.5))  # only the first NLL counts
    assert monitor.reference == 2.0
    high, low = {"nll": 20.5}, {"nll": 19.5}
    for step, row in enumerate([high, high, low, high, high], start=1):
        monitor.check(step, row)  # never 3 in a row
    with pytest.raises(TrainingDiverged, match=r"^diverging: training NLL 20.5 above 10 x the first step's 2 for 3"):
        monitor.check(6, high)


def test_monitor_reference_is_floored() -> None:
    monitor = DivergenceMonitor(DivergenceRule(nll_factor=10.0, patience=1, min_reference=0.1), lr=1.0)
    monitor.start(1e-5)  # an almost perfect fit: 10 x 1e-5 would stop on noise
    assert monitor.reference == 0.1
    monitor.check(1, {"nll": 0.99})
    with pytest.raises(TrainingDiverged, match="diverging"):
        monitor.check(2, {"nll": 1.01})
    monitor = DivergenceMonitor(DivergenceRule(), lr=1.0)
    monitor.start(math.nan)  # a non-finite first NLL falls back to the floor (the row check reports it)
    assert monitor.reference == 0.1


def test_monitor_state_round_trips() -> None:
    rule = DivergenceRule(nll_factor=10.0, patience=2)
    monitor = DivergenceMonitor(rule, lr=1.0)
    monitor.start(torch.tensor(1.5))
    monitor.check(10, {"nll": 16.0})
    resumed = DivergenceMonitor(rule, lr=1.0)
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.reference == 1.5
    with pytest.raises(TrainingDiverged, match="for 2 checks in a row at step 20"):
        resumed.check(20, {"nll": 16.0})


def test_monitor_bounds_the_largest_sigma_of_a_real_posterior() -> None:
    model = Tiny()
    posterior = WeightPosterior(model, ParameterGroups.split(model, ("head.",)), sigma_mode="parameter", init_sigma=0.1)
    monitor = DivergenceMonitor(DivergenceRule(max_sigma=1.0), lr=0.1)
    monitor.check(10, {"nll": 1.0}, posterior)
    with torch.no_grad():
        posterior.rho["head/weight"][1, 2] = 5.0  # one weight's sigma = softplus(5) = 5.0 (mean sigma stays ~0.2)
    assert posterior.mean_sigma() < 1.0
    assert posterior.max_sigma() == pytest.approx(5.0067, rel=1e-4)
    with pytest.raises(
        TrainingDiverged, match=r"^exploding sigma: largest posterior std 5.01 > max_sigma 1 at step 10"
    ):
        monitor.check(10, {"nll": 1.0}, posterior)
    with torch.no_grad():
        posterior.rho["head/weight"][1, 2] = math.inf
    with pytest.raises(TrainingDiverged, match=r"^non-finite sigma at step 10"):
        monitor.check(10, {"nll": 1.0}, posterior)
    DivergenceMonitor(DivergenceRule(max_sigma=None), lr=0.1).check(10, {"nll": 1.0}, posterior)  # no bound


def test_kinds_are_the_message_tags() -> None:
    assert DIVERGENCE_KINDS == ("non-finite", "exploding sigma", "diverging")


# --- the training loop -------------------------------------------------------------------------


def test_runaway_nll_is_diverging_and_would_otherwise_finish() -> None:
    """lr = 1e4 with clipping keeps every value finite but the NLL in the millions: the NLL rule ends it."""
    data = blobs()
    with pytest.raises(TrainingDiverged, match=r"^diverging: training NLL .* for 3 checks in a row at step 30 "):
        train_model(map_objective(), data.x, data.y, config(lr=1e4))
    result = train_model(map_objective(), data.x, data.y, config(lr=1e4, divergence=DivergenceRule(nll_factor=None)))
    assert math.isfinite(result.final_loss)
    assert min(row["nll"] for row in result.history) > 1e3  # it really had diverged


def test_monitor_check_end_needs_only_the_last_check_above_the_limit() -> None:
    monitor = DivergenceMonitor(DivergenceRule(nll_factor=10.0, patience=3), lr=2.0)
    monitor.start(torch.tensor(1.0))
    monitor.check(10, {"nll": 50.0})
    monitor.check(20, {"nll": 5.0})  # recovered: the end is fine
    monitor.check_end()
    monitor.check(30, {"nll": 40.0})  # ends above: 1 check, fewer than patience, no steps left to recover
    with pytest.raises(TrainingDiverged, match=r"^diverging: training NLL 40 above 10 x .* at the end of training "):
        monitor.check_end()
    DivergenceMonitor(DivergenceRule(nll_factor=None), lr=2.0).check_end()  # no NLL rule, nothing to end on


def test_a_run_too_short_for_patience_that_ends_diverged_is_diverged() -> None:
    """Issue 31: ``compare --lrs 1e6 --steps 20`` chose a configuration with 20 % test accuracy and a training
    NLL in the millions: two log checks, fewer than patience, and the run was reported as complete."""
    data = blobs()
    with pytest.raises(TrainingDiverged, match=r"^diverging: .* at the end of training \(step 20, lr=1e\+06\)$"):
        train_model(deelbo_objective(), data.x, data.y, config(lr=1e6, steps=20))
    early = config(lr=1e6, steps=20, patience=1000, eval_every=10)  # early stopping ends on its best weights
    assert train_model(map_objective(), data.x, data.y, early, val=(data.x, data.y)).stopped_step == 20


def test_a_normal_run_is_not_stopped() -> None:
    data = blobs()
    result = train_model(deelbo_objective(), data.x, data.y, config(lr=0.1))
    assert result.stopped_step == 60
    assert result.history[-1]["nll"] < result.history[0]["nll"]


def test_exploding_sigma_ends_a_deelbo_run_at_the_first_check() -> None:
    data = blobs()
    rule = DivergenceRule(max_sigma=0.5)
    with pytest.raises(
        TrainingDiverged, match=r"^exploding sigma: largest posterior std 0\.9\d* > max_sigma 0.5 at step 10 "
    ):
        train_model(deelbo_objective(init_sigma=1.0), data.x, data.y, config(lr=1e-4, divergence=rule))


def test_sigma_growing_past_the_bound_during_training() -> None:
    """At lr = 1 this network's sigma grows from 1e-3 past 1 (observed ~2.4): a bound of 1 stops it there."""
    data = blobs()
    objective = deelbo_objective()
    assert objective.deelbo.posterior.max_sigma() == pytest.approx(1e-3)
    with pytest.raises(TrainingDiverged, match=r"^exploding sigma") as info:
        train_model(objective, data.x, data.y, config(lr=1.0, divergence=DivergenceRule(max_sigma=1.0)))
    match = re.search(r"largest posterior std ([\d.e+-]+) > max_sigma 1 at step (\d+)", str(info.value))
    assert match is not None, str(info.value)
    assert float(match.group(1)) > 1.0 and int(match.group(2)) % 10 == 0


def test_non_finite_lambda_tau_sigma_are_named() -> None:
    """Weights near float32's largest value overflow in the first forward (lr 1e30 did it before the
    learning rates were bounded by MAX_LEARNING_RATE)."""
    data = blobs()
    objective = deelbo_objective()
    with torch.no_grad():
        objective.model.body.weight.mul_(1e38)
    with pytest.raises(TrainingDiverged, match=r"^non-finite loss, nll, penalty, lambda at step 10 \(lr=1\)$"):
        train_model(objective, data.x, data.y, config(lr=1.0))
    x = data.x.clone()
    x[7, 2] = math.nan  # one bad input poisons the weights at the first step that sees it
    with pytest.raises(TrainingDiverged, match=r"^non-finite loss, nll, penalty, lambda, tau, sigma at step 10 "):
        train_model(deelbo_objective(), x, data.y, config(lr=0.1, batch_size=60))


# --- the study: a diverged trial is pruned with its reason, the study goes on --------------------


def _objective(task: od.TaskSpec) -> object:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e6, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
        return od.fit(trial, task, lr=lr, weight_decay=weight_decay)

    return objective


@pytest.mark.parametrize("sampler_kind", ["deelbo", "map"])
def test_diverged_trials_are_pruned_with_reason_and_study_continues(sampler_kind: str) -> None:
    """lr = 1e6 (the largest allowed) and lr = 1e4 keep finite values but a runaway NLL (diverging)."""
    task = tiny_task()
    grid = {"lr": [1e6, 1e4, 0.1, 1e-2]}
    if sampler_kind == "deelbo":
        sampler: optuna.samplers.BaseSampler = od.DEELBoSampler(optuna.samplers.GridSampler(grid))
    else:
        sampler = optuna.samplers.GridSampler({**grid, "weight_decay": [1e-3]})
    study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.NopPruner())
    study.optimize(_objective(task), n_trials=4)  # type: ignore[arg-type]

    by_lr = {t.params["lr"]: t for t in study.trials}
    assert set(by_lr) == {1e6, 1e4, 0.1, 1e-2}  # the study ran every configuration
    for lr, kind in ((1e6, "diverging"), (1e4, "diverging")):
        bad = by_lr[lr]
        assert bad.state == TrialState.PRUNED
        reason = bad.user_attrs["failure:reason"]
        assert reason.startswith(kind) and f"(lr={lr:g})" in reason, reason
        assert bad.user_attrs["time:trial_s"] > 0
    for lr in (0.1, 1e-2):
        assert by_lr[lr].state == TrialState.COMPLETE
        assert "failure:reason" not in by_lr[lr].user_attrs
        assert math.isfinite(by_lr[lr].value)  # type: ignore[arg-type]
    assert study.best_trial.params["lr"] in (0.1, 1e-2)
    assert math.isfinite(study.best_value)


def test_task_divergence_rule_reaches_fit() -> None:
    """The task's rule is the one fit's training uses: a tight sigma bound prunes an otherwise fine trial."""
    sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.1]}))
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective(tiny_task(divergence=DivergenceRule(max_sigma=1e-4))), n_trials=1)  # type: ignore[arg-type]
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["failure:reason"].startswith("exploding sigma: largest posterior std ")
    assert "> max_sigma 0.0001 at step 10 (lr=0.1)" in trial.user_attrs["failure:reason"]
