"""Tests for :mod:`optuna_deelbo.train._training` (the loop, its log, divergence and pruning) and an
end-to-end DE-ELBo fit on the embedded digits task.

The toy problem is three well-separated Gaussian blobs in 4-D and a tiny body/head network,
so every run takes a fraction of a second on CPU.
"""

from __future__ import annotations

import math
import re
import shutil

import optuna
import pytest
import torch
from _nets import F64, Net, make_net
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError, TrainingDiverged
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._objectives import DEELBoObjective, LossRecord, MAPObjective
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import IsotropicGaussian
from optuna_deelbo.data._splits import digits_transfer
from optuna_deelbo.task._builtin import digits_task
from optuna_deelbo.train._divergence import DivergenceRule
from optuna_deelbo.train._training import TrainConfig, evaluate, train_model
from optuna_deelbo.tuning._fit import fit_deelbo

CENTERS = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]], dtype=F64)


def blobs(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` points from three unit-variance blobs 3 apart (nearly separable), balanced labels."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = CENTERS[y] + torch.randn(n, 4, generator=gen, dtype=F64)
    return x, y


def l2sp_prior(net: Net, groups: ParameterGroups) -> IsotropicGaussian:
    return IsotropicGaussian(groups.flat(dict(net.named_parameters()), "body").detach().clone())


def map_objective(weight_decay: float = 1e-3, seed: int = 0) -> MAPObjective:
    net, groups = make_net(seed)
    return MAPObjective(net, groups, l2sp_prior(net, groups), weight_decay)


def config(**kw: object) -> TrainConfig:
    args: dict[str, object] = {"lr": 0.05, "steps": 40, "batch_size": 16, "progress": False, "device": "cpu"}
    args.update(kw)
    return TrainConfig(**args)  # type: ignore[arg-type]


class RecordingMAP(MAPObjective):
    """A MAP objective that remembers every step's loss and NLL."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.losses: list[float] = []
        self.nlls: list[float] = []
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor, y: Tensor, amp: bool = False) -> LossRecord:
        record = super().forward(x, y, amp)
        self.losses.append(float(record.loss.detach()))
        self.nlls.append(float(record.nll.detach()))
        self.batch_sizes.append(int(x.shape[0]))
        return record


def recording_objective(weight_decay: float = 1e-2) -> RecordingMAP:
    net, groups = make_net()
    return RecordingMAP(net, groups, l2sp_prior(net, groups), weight_decay)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


# --- TrainConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"lr": 0.0}, "learning rate"),
        ({"lr": -0.1}, "learning rate"),
        ({"lr": math.nan}, "learning rate"),
        ({"lr": math.inf}, "learning rate"),
        ({"lr": "0.1"}, "learning rate"),
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"steps": 2.0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"log_every": 0}, "log_every"),
        ({"eval_every": 0}, "eval_every"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": math.nan}, "momentum"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": -1.0}, "clip_norm"),
    ],
)
def test_train_config_rejects_bad_settings(kw: dict[str, object], word: str) -> None:
    args: dict[str, object] = {"lr": 0.1}
    args.update(kw)
    with pytest.raises(ConfigError, match=word):
        TrainConfig(**args)  # type: ignore[arg-type]


def test_train_config_accepts_edge_settings() -> None:
    TrainConfig(lr=1e-10, steps=1, batch_size=1, momentum=0.0, nesterov=False, clip_norm=None)
    TrainConfig(lr=3, momentum=0.999)
    TrainConfig(lr=1e6, steps=2**31 - 1, seed=2**32 - 1)  # the documented bounds are inclusive


# --- train: input checks --------------------------------------------------------------------


def test_train_on_empty_data_raises() -> None:
    with pytest.raises(ConfigError, match="empty"):
        train_model(map_objective(), torch.zeros(0, 4, dtype=F64), torch.zeros(0, dtype=torch.long), config())


@pytest.mark.parametrize("y_shape", [(19,), (21,), (20, 1), ()])
def test_train_label_shape_mismatch_raises(y_shape: tuple[int, ...]) -> None:
    x, _ = blobs(20)
    with pytest.raises(ConfigError, match="labels"):
        train_model(map_objective(), x, torch.zeros(y_shape, dtype=torch.long), config())


def test_train_bad_device_raises() -> None:
    x, y = blobs(20)
    with pytest.raises(ConfigError, match="device"):
        train_model(map_objective(), x, y, config(device="not-a-device"))


# --- train: MAP -----------------------------------------------------------------------------


def test_map_training_fits_a_separable_problem() -> None:
    objective = map_objective()
    x, y = blobs(90)
    before = evaluate(objective.model, x, y)
    result = train_model(objective, x, y, config(steps=60, log_every=5))
    after = evaluate(objective.model, x, y)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.5 * first
    assert result.final_loss < first
    assert after.nll < 0.5 * before.nll
    assert after.accuracy >= 0.95
    assert result.final_nll <= result.final_loss  # MAP penalty >= 0
    assert result.seconds > 0
    assert result.val_history == []  # no trial, no validation passes


def test_training_updates_model_in_place_and_is_seeded() -> None:
    x, y = blobs(40)
    a, b = map_objective(), map_objective()
    ptrs = [p.data_ptr() for p in a.model.parameters()]
    start = [p.detach().clone() for p in a.model.parameters()]
    ra = train_model(a, x, y, config(seed=3))
    rb = train_model(b, x, y, config(seed=3))
    assert [p.data_ptr() for p in a.model.parameters()] == ptrs
    assert any(not torch.equal(p.detach(), s) for p, s in zip(a.model.parameters(), start, strict=True))
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert ra.final_loss == rb.final_loss
    c = map_objective()
    rc = train_model(c, x, y, config(seed=4))  # another minibatch order
    assert rc.final_loss != ra.final_loss


@pytest.mark.parametrize(("steps", "log_every", "expected"), [(50, 10, [10, 20, 30, 40, 50]), (23, 10, [10, 20, 23])])
def test_history_rows(steps: int, log_every: int, expected: list[int]) -> None:
    objective = recording_objective()
    x, y = blobs(40)
    result = train_model(objective, x, y, config(steps=steps, log_every=log_every, batch_size=10))
    assert [row["step"] for row in result.history] == expected
    for row in result.history:
        assert set(row) == {"step", "loss", "nll", "penalty", "lr"}
    # each row holds the mean over the steps since the previous row
    bounds = [0, *expected]
    for row, lo, hi in zip(result.history, bounds[:-1], bounds[1:], strict=True):
        window = objective.losses[lo:hi]
        nll_window = objective.nlls[lo:hi]
        assert row["loss"] == pytest.approx(sum(window) / len(window), rel=1e-6)
        assert row["nll"] == pytest.approx(sum(nll_window) / len(nll_window), rel=1e-6)
        assert row["penalty"] == pytest.approx(row["loss"] - row["nll"], rel=1e-4, abs=1e-9)
        assert row["penalty"] > 0


def test_cosine_schedule_decays_to_zero() -> None:
    x, y = blobs(40)
    result = train_model(map_objective(), x, y, config(lr=0.08, steps=40, log_every=10))
    lrs = [row["lr"] for row in result.history]
    # the logged lr is the one *after* the step: 0.04 * (1 + cos(pi * step / 40))
    for row in result.history:
        assert row["lr"] == pytest.approx(0.04 * (1 + math.cos(math.pi * row["step"] / 40)), abs=1e-12)
    assert lrs == sorted(lrs, reverse=True)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_without_cosine_the_lr_stays_constant() -> None:
    x, y = blobs(40)
    result = train_model(map_objective(), x, y, config(lr=0.08, steps=30, cosine=False))
    assert [row["lr"] for row in result.history] == [0.08] * 3


@pytest.mark.parametrize(
    ("n", "batch_size", "steps", "tail"),
    [
        (40, 10, 22, 4),  # 4 batches per epoch
        (45, 10, 22, 4),  # ragged last batch dropped: still 4 per epoch
        (40, 10, 3, 3),  # fewer steps than an epoch: the mean over all of them
        (12, 64, 7, 1),  # batch capped at N: one step per epoch
    ],
)
def test_final_loss_is_mean_over_last_epoch(n: int, batch_size: int, steps: int, tail: int) -> None:
    objective = recording_objective()
    x, y = blobs(n)
    result = train_model(objective, x, y, config(steps=steps, batch_size=batch_size, log_every=5))
    assert len(objective.losses) == steps
    assert set(objective.batch_sizes) == {min(batch_size, n)}
    expected_loss = sum(objective.losses[-tail:]) / tail
    expected_nll = sum(objective.nlls[-tail:]) / tail
    assert result.final_loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.final_nll == pytest.approx(expected_nll, rel=1e-6)
    if tail < steps:
        longer = sum(objective.losses[-tail - 1 :]) / (tail + 1)
        assert result.final_loss != pytest.approx(longer, rel=1e-6)


def test_each_epoch_visits_every_example_once() -> None:
    seen: list[Tensor] = []

    class Spy(MAPObjective):
        def forward(self, x: Tensor, y: Tensor, amp: bool = False) -> LossRecord:
            seen.append(x[:, 0].detach().clone())
            return super().forward(x, y, amp)

    net, groups = make_net()
    x, y = blobs(30)
    x[:, 0] = torch.arange(30, dtype=F64)  # tag each row
    train_model(Spy(net, groups, l2sp_prior(net, groups), 0.0), x, y, config(steps=6, batch_size=10, lr=1e-4))
    for epoch in range(2):
        rows = torch.cat(seen[3 * epoch : 3 * epoch + 3])
        assert sorted(rows.long().tolist()) == list(range(30))


# --- train: DE-ELBo -------------------------------------------------------------------------


def deelbo_run(n: int, seed: int = 0, steps: int = 150) -> tuple[DEELBoObjective, list[dict[str, float]]]:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, n, l2sp_prior(net, groups), head=groups, kappa=None))
    x, y = blobs(n, seed=seed)
    result = train_model(objective, x, y, config(steps=steps, batch_size=20, lr=0.05, seed=seed))
    return objective, result.history


def test_deelbo_learns_finite_positive_lambda_that_depends_on_n() -> None:
    obj_small, hist_small = deelbo_run(20)
    obj_large, hist_large = deelbo_run(400)
    assert obj_small.deelbo.kappa == pytest.approx(83 / 20)
    assert obj_large.deelbo.kappa == pytest.approx(83 / 400)
    for history, objective in ((hist_small, obj_small), (hist_large, obj_large)):
        assert set(history[-1]) == {"step", "loss", "nll", "penalty", "lr", "lambda", "tau", "sigma"}
        for row in history:
            assert math.isfinite(row["lambda"]) and row["lambda"] > 0
            assert math.isfinite(row["tau"]) and row["tau"] > 0
            assert row["sigma"] > 0
        # lambda is learned: at the start (theta = mu, sigma = 1e-3) lam* = 1e-6; it grows by orders of magnitude
        assert history[-1]["lambda"] > 1e3 * 1e-3**2
        assert history[-1]["lambda"] != history[0]["lambda"]
        # the logged sigma is the posterior's current one
        assert history[-1]["sigma"] == pytest.approx(objective.deelbo.posterior.mean_sigma(), rel=1e-12)
    lam_small, lam_large = hist_small[-1]["lambda"], hist_large[-1]["lambda"]
    # Observed (seed 0): lambda(N=20) ~ 0.15 < lambda(N=400) ~ 0.18, but the direction flips with the
    # data seed (kappa = D/N makes the KL weight 1/D for every N), so only the difference is asserted.
    assert abs(lam_small - lam_large) > 0.02 * max(lam_small, lam_large)


# --- train: divergence ----------------------------------------------------------------------


@pytest.mark.parametrize("log_every", [1, 4])
def test_huge_learning_rate_diverges_with_step_in_message(log_every: int) -> None:
    x, y = blobs(30)
    only_non_finite = DivergenceRule(max_sigma=None, nll_factor=None)  # the NLL rule would stop it sooner
    with pytest.raises(TrainingDiverged) as info:
        train_model(
            map_objective(weight_decay=1.0),
            x,
            y,
            config(lr=1e6, clip_norm=None, steps=60, log_every=log_every, divergence=only_non_finite),
        )
    message = str(info.value)
    match = re.search(r"at step (\d+)", message)
    assert match is not None, message
    step = int(match.group(1))
    assert 1 <= step < 60
    assert step % log_every == 0  # detected at a host synchronisation
    assert message.startswith("non-finite ") and "loss" in message
    assert "lr=1e+06" in message


def test_clipping_prevents_the_same_divergence() -> None:
    x, y = blobs(30)
    result = train_model(map_objective(weight_decay=1.0), x, y, config(lr=1e-3, clip_norm=1.0, steps=20, log_every=1))
    assert all(math.isfinite(row["loss"]) for row in result.history)


# --- train: Optuna reporting and pruning ----------------------------------------------------


def test_always_prune_pruner_stops_training_after_first_report() -> None:
    study = optuna.create_study(pruner=AlwaysPrune())
    trial = study.ask()
    objective = map_objective()
    x, y = blobs(60)
    xv, yv = blobs(30, seed=9)
    with pytest.raises(optuna.TrialPruned, match="step 10"):
        train_model(objective, x, y, config(steps=40, eval_every=10), val=(xv, yv), trial=trial)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert list(frozen.intermediate_values) == [10]
    # the reported value is the validation NLL of the model as it was when pruned
    assert frozen.intermediate_values[10] == pytest.approx(evaluate(objective.model, xv, yv).nll, rel=1e-9)


def test_reports_every_eval_every_and_at_the_end_without_pruning() -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    objective = map_objective()
    x, y = blobs(60)
    xv, yv = blobs(30, seed=9)
    result = train_model(objective, x, y, config(steps=25, eval_every=10, log_every=5), val=(xv, yv), trial=trial)
    study.tell(trial, result.final_loss)
    values = study.trials[0].intermediate_values
    assert sorted(values) == [10, 20, 25]
    assert [s for s, _, _ in result.val_history] == [10, 20, 25]
    for step, nll, accuracy in result.val_history:
        assert values[step] == nll
        assert 0 <= accuracy <= 1
    assert result.val_history[-1][1] == pytest.approx(evaluate(objective.model, xv, yv).nll, rel=1e-9)


def test_without_val_the_running_training_loss_is_reported() -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    x, y = blobs(60)
    result = train_model(map_objective(), x, y, config(steps=20, eval_every=10, log_every=5), trial=trial)
    study.tell(trial, result.final_loss)
    values = study.trials[0].intermediate_values
    rows = {int(r["step"]): r["loss"] for r in result.history}
    assert values == {10: rows[10], 20: rows[20]}
    assert result.val_history == []


# --- evaluate -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 1024])
def test_evaluate_matches_hand_computation(batch_size: int) -> None:
    net, _ = make_net()
    net.train()
    with torch.no_grad():
        for seed in range(3):  # non-trivial BatchNorm running statistics
            net(blobs(32, seed=20 + seed)[0] * 2)
    x, y = blobs(10, seed=5)
    y[:3] = (y[:3] + 1) % 3  # some wrong labels so accuracy < 1
    running = net.body[1].running_mean.clone()
    metrics = evaluate(net, x, y, batch_size=batch_size)
    assert net.training  # mode restored
    assert torch.equal(net.body[1].running_mean, running)  # eval mode: no buffer updates
    net.eval()
    with torch.no_grad():
        logits = net(x)
    nll = -torch.log_softmax(logits, dim=-1)[torch.arange(10), y].mean()
    accuracy = (logits.argmax(-1) == y).double().mean()
    assert metrics.nll == pytest.approx(float(nll), rel=1e-6)
    assert metrics.accuracy == float(accuracy)
    assert 0 < metrics.accuracy < 1


def test_evaluate_empty_set_raises() -> None:
    net, _ = make_net()
    with pytest.raises(ConfigError, match="empty"):
        evaluate(net, torch.zeros(0, 4, dtype=F64), torch.zeros(0, dtype=torch.long))


# --- the embedded digits task ---------------------------------------------------------------


def test_digits_task_and_fit_deelbo_end_to_end() -> None:
    task, pretrain_s = digits_task(n_train=50, steps=30, pretrain_steps=30, device="cpu")
    assert pretrain_s > 0
    assert task.n_train == 50
    assert task.test is not None and len(task.test) > 100
    objective, result = fit_deelbo(task, lr=0.01)
    assert objective.deelbo.n_train == 50
    assert objective.deelbo.kappa == pytest.approx(objective.deelbo.num_weights / 50)
    last = result.history[-1]
    assert last["step"] == 30
    assert math.isfinite(last["lambda"]) and last["lambda"] > 0
    assert math.isfinite(last["tau"]) and last["tau"] > 0
    assert math.isfinite(result.final_loss)


@pytest.mark.parametrize("n_train", [0, -1, 24, 10_000])
def test_digits_transfer_rejects_bad_n_train(n_train: int) -> None:
    with pytest.raises(ConfigError, match="n_train"):
        digits_transfer(n_train)


def test_digits_transfer_largest_allowed_n_train() -> None:
    data = digits_transfer(25)
    assert len(data.train) == 25
    assert sorted(data.train.y.tolist()) == sorted(list(range(5)) * 5)
    max_n = len(data.train) + len(data.test) - 100
    assert len(digits_transfer(max_n).test) == 100
    with pytest.raises(ConfigError, match="n_train"):
        digits_transfer(max_n + 1)


# --- channels_last and torch.compile ---------------------------------------------------------------


def _conv_objective(kind: str, seed: int = 0) -> MAPObjective | DEELBoObjective:
    """A small float32 conv net (channels_last matters only for 4-d activations), MAP or DE-ELBo."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    groups = ParameterGroups.split(net, ("4.",))
    prior = IsotropicGaussian(groups.flat(dict(net.named_parameters()), "body").detach().clone())
    if kind == "map":
        return MAPObjective(net, groups, prior, weight_decay=1e-2)
    return DEELBoObjective(DEELBo(net, 30, prior, head=groups))


def _images(n: int = 30) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = torch.randn(n, 2, 4, 4, generator=gen) + y.view(-1, 1, 1, 1).float()
    return x, y


def test_channels_last_converts_the_model_and_matches_the_default_layout() -> None:
    x, y = _images()
    runs = {}
    for layout in (False, True):
        objective = _conv_objective("map")
        runs[layout] = train_model(objective, x, y, config(steps=12, batch_size=10, log_every=4, channels_last=layout))
        conv = objective.model[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == layout
        assert conv.is_contiguous() != layout
    for a, b in zip(runs[False].history, runs[True].history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_channels_last_deelbo_samples_keep_the_layout() -> None:
    """The weight noise is drawn in the weights' own layout, so sampled weights stay NHWC."""
    objective = _conv_objective("deelbo")
    assert isinstance(objective, DEELBoObjective)
    x, y = _images()
    result = train_model(objective, x, y, config(steps=6, batch_size=10, log_every=3, channels_last=True))
    assert all(math.isfinite(r["lambda"]) and r["lambda"] > 0 for r in result.history)
    draw = objective.deelbo.posterior.sample()
    assert draw["0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not draw["0.weight"].is_contiguous()


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compile_matches_eager_training() -> None:
    x, y = _images()
    eager, compiled = _conv_objective("deelbo"), _conv_objective("deelbo")
    a = train_model(eager, x, y, config(steps=6, batch_size=10, log_every=2))
    b = train_model(compiled, x, y, config(steps=6, batch_size=10, log_every=2, compile=True))
    assert getattr(compiled.model, "_compiled_call_impl", None) is not None
    assert getattr(eager.model, "_compiled_call_impl", None) is None
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_a["loss"] == pytest.approx(row_b["loss"], rel=1e-4)
    for p, q in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
