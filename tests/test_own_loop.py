"""``od.DEELBo`` in a user's own loop: the docs' examples run as they stand, and the step's maths and errors."""

from __future__ import annotations

import math
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _docs import run_doc_block
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optuna_deelbo as od
from optuna_deelbo import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LRS = [1e-1, 3e-2, 1e-2, 3e-3]


def _run_block(marker: str) -> dict[str, Any]:
    """Run a docs block as it stands, from a temporary folder (not the repository root), as a user would."""
    return run_doc_block(marker, elsewhere=True)


def test_readme_own_loop_gives_what_fit_gives() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error", od.PlaceholderWarning)  # the example reports: no placeholder warning
        ns = _run_block("own-loop-example")
    task = ns["task"]
    own = {t.params["lr"]: t for t in ns["study"].trials}
    assert sorted(own) == sorted(LRS)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
        return od.fit(trial, task, lr=lr, weight_decay=weight_decay)

    study = optuna.create_study(sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"lr": LRS})))
    study.optimize(objective, n_trials=4)
    for trial in study.trials:
        mine = own[trial.params["lr"]]
        for name in ("learned:lambda", "learned:tau", "learned:sigma", "learned:weight_decay"):
            assert mine.user_attrs[name] == pytest.approx(trial.user_attrs[name], rel=1e-6, abs=0), name
        assert mine.user_attrs["test:accuracy"] == trial.user_attrs["test:accuracy"]
        assert mine.value == pytest.approx(trial.value, rel=1e-6)
    assert ns["study"].best_params == study.best_params


def test_readme_dataloader_example_trains_and_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix="": str(tmp_path))  # where the checkpoint lands
    ns = _run_block("dataloader-example")
    reg = ns["reg"]
    assert reg.lam > 0 and reg.sigma != pytest.approx(1e-3)  # sigma trained
    import torchvision

    state = torch.load(tmp_path / "deelbo-resnet18.pt", weights_only=True)
    fresh = od.DEELBo(torchvision.models.resnet18(num_classes=5), n_train=200, prior="l2-sp", head=("fc.",))
    assert not torch.equal(fresh.body_prior.mean, reg.body_prior.mean)  # another initialisation
    fresh.load_state_dict(state)
    assert torch.equal(fresh.body_prior.mean, reg.body_prior.mean)  # the L2-SP mean came back with the weights
    assert fresh.lam == reg.lam and fresh.sigma == reg.sigma


def test_readme_regression_learns_a_lambda_that_moves_with_n() -> None:
    ns = _run_block("regression-example")
    small, large = ns["learned_lambda"](25), ns["learned_lambda"](400)
    assert all(math.isfinite(v) and v > 0 for v in (small, large))
    assert abs(small - large) / large > 0.01, (small, large)
    assert small > 1e-4  # not the collapsed solution (every weight at 0 gives lambda ~ sigma^2 ~ 1e-6)


# --- the step --------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net().double()


def _data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=generator, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator)


def test_eval_mode_predicts_with_the_mean_weights_and_train_mode_samples() -> None:
    model = _net()
    reg = od.DEELBo(model, n_train=16, head=("head.",), init_sigma=0.1)
    x, _ = _data()
    reg.eval()
    torch.testing.assert_close(reg(x), model(x))
    reg.train()
    first, second = reg(x), reg(x)
    assert not torch.allclose(first, second)


def test_a_deelbo_pickles_and_its_copy_still_loads_states() -> None:
    """Lightning's own tests pickle a Trainer (its callbacks, so the DE-ELBo): a lambda hook made that fail."""
    model = _net()
    reg = od.DEELBo(model, n_train=16, head=("head.",), init_sigma=0.1, noise_seed=3)
    x, y = _data()
    reg.loss(nn.functional.cross_entropy(reg(x), y)).backward()
    copy = pickle.loads(pickle.dumps(reg))
    assert copy.lam == reg.lam and copy.sigma == reg.sigma
    other = od.DEELBo(_net(1), n_train=16, head=("head.",), init_sigma=0.1)
    copy.load_state_dict(other.state_dict())  # the post-load hook (the priors from the buffers) came along
    assert torch.equal(copy.body_prior.mean, other.body_prior.mean)


@settings(max_examples=examples(20), deadline=None)
@given(
    init_sigma=st.floats(1e-3, 0.5),
    seed=st.integers(0, 2**16),
    prior=st.sampled_from(["l2-sp", "l2-zero"]),
    sigma_mode=st.sampled_from(["scalar", "layer"]),
)
def test_loss_is_nll_plus_brute_force_kl(init_sigma: float, seed: int, prior: str, sigma_mode: str) -> None:
    model = _net(seed)
    mu = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if n.startswith("body.")])
    if prior == "l2-zero":
        mu = torch.zeros_like(mu)
    reg = od.DEELBo(model, n_train=16, prior=prior, head=("head.",), init_sigma=init_sigma, sigma_mode=sigma_mode)
    if prior == "l2-sp":
        reg.fix_prior_mean()  # the mean now (else the first training forward takes it, after the moves below)
    with torch.no_grad():  # training moved the weights away from the prior mean
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = _data()
    reg.train()
    nll = nn.functional.cross_entropy(reg(x), y)
    loss = reg.loss(nll)

    def kl(mean: torch.Tensor, sigma: torch.Tensor, prior_mean: torch.Tensor) -> torch.Tensor:
        lam = ((sigma**2).sum() + ((mean - prior_mean) ** 2).sum()) / mean.numel()  # lambda* in closed form
        q = torch.distributions.Normal(mean, sigma)
        p = torch.distributions.Normal(prior_mean, lam.sqrt().expand_as(mean))
        return torch.distributions.kl_divergence(q, p).sum()

    post = reg.posterior
    body_sigma = post.flat_sigma("body").expand_as(post.flat_mean("body"))
    head_mean = post.flat_mean("head")
    total = kl(post.flat_mean("body"), body_sigma, mu) + kl(
        head_mean, post.flat_sigma("head").expand_as(head_mean), torch.zeros_like(head_mean)
    )
    torch.testing.assert_close(loss - nll, total / (reg.kappa * reg.n_train))
    assert reg.kappa == pytest.approx(reg.num_weights / 16)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.sigma_parameters())


def test_learned_values_and_report_write_the_user_attrs() -> None:
    model = _net()
    reg = od.DEELBo(model, n_train=16, head=("head.",), init_sigma=0.02)
    post = reg.posterior
    with torch.no_grad():
        lam = float(reg.body_prior.optimal_variance(post.flat_mean("body"), post.flat_sigma("body")))
    assert reg.lam == pytest.approx(lam)
    assert reg.weight_decay == pytest.approx(1 / (lam * reg.kappa * 16))
    assert reg.tau is not None and reg.tau > 0 and reg.sigma == pytest.approx(0.02)
    study = optuna.create_study()
    trial = study.ask()
    attrs = od.report_learned(trial, reg)
    study.tell(trial, 0.0)
    stored = study.trials[0].user_attrs
    assert stored == attrs and stored["learned:lambda"] == pytest.approx(lam) and stored["mode"] == "deelbo"


def _toy_objective(report: bool):  # type: ignore[no-untyped-def]
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
        reg = od.DEELBo(_net(), n_train=16, head=("head.",))
        x, y = _data()
        optimizer = torch.optim.SGD(reg.parameters(), lr=lr)
        reg.train()
        loss = reg.loss(nn.functional.cross_entropy(reg(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if report:
            od.report_learned(trial, reg)
        return float(loss.detach())

    return objective


def test_a_trial_that_never_reports_warns_about_the_placeholder() -> None:
    sampler = od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.1, 0.01]}))
    study = optuna.create_study(sampler=sampler)
    with pytest.warns(od.PlaceholderWarning, match=r"trial 0 .*weight_decay=1e-07 .*od\.report_learned\(trial, reg\)"):
        study.optimize(_toy_objective(report=False), n_trials=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", od.PlaceholderWarning)
        study.optimize(_toy_objective(report=True), n_trials=1)  # reports: silent
        optuna.create_study().optimize(_toy_objective(report=False), n_trials=1)  # not under DEELBoSampler: MAP


def test_bf16_autocast_keeps_the_kl_in_float32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reg = od.DEELBo(model, n_train=16, head=("2.",))
    x, y = _data()
    reg.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reg(x.float())
    assert out.dtype == torch.bfloat16
    loss = reg.loss(nn.functional.cross_entropy(out.float(), y))
    assert reg.last_terms["kl"].dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_compiled_model_gives_the_eager_loss() -> None:
    x, y = _data()
    losses = []
    for compiled in (False, True):
        model = _net()
        if compiled:
            model.compile(backend="aot_eager")  # in place: parameter names unchanged
        reg = od.DEELBo(model, n_train=16, head=("head.",), init_sigma=0.05)
        reg.train()
        torch.manual_seed(3)
        loss = reg.loss(nn.functional.cross_entropy(reg(x), y))
        loss.backward()
        losses.append((float(loss), float(next(reg.sigma_parameters()).grad)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)


def test_batchnorm_recalibration_from_a_dataloader_equals_the_tensor_pass() -> None:
    x, y = _data(64)
    results = []
    for source in ("tensor", "loader"):
        model = _net()
        reg = od.DEELBo(model, n_train=64, head=("head.",))
        data = x if source == "tensor" else DataLoader(TensorDataset(x, y), batch_size=256)
        assert reg.recalibrate_batchnorm(data) == 1
        bn = model.body[1]
        results.append((bn.running_mean.clone(), bn.running_var.clone()))
    torch.testing.assert_close(results[0], results[1])
    with pytest.raises(ConfigError, match="no batches"):
        od.DEELBo(_net(), n_train=4).recalibrate_batchnorm(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4))


def test_moving_the_regularizer_moves_its_priors() -> None:
    reg = od.DEELBo(_net().float(), n_train=16, head=("head.",))
    assert reg.body_prior.mean.dtype == torch.float32
    reg.double()
    assert reg.body_prior.mean.dtype == torch.float64 and reg.head_prior is not None
    assert reg.head_prior.mean.dtype == torch.float64 and math.isfinite(reg.lam)


def test_minibatches_resume_where_they_left_off() -> None:
    batches = od.Minibatches(10, 3, seed=4)
    assert batches.per_epoch == 3
    [batches.next() for _ in range(4)]
    state = batches.state_dict()
    expected = [batches.next() for _ in range(5)]
    again = od.Minibatches(10, 3, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [again.next() for _ in range(5)], strict=True))
    first_epoch = torch.cat([b for b, _ in zip(od.Minibatches(9, 3, seed=0), range(3), strict=False)])
    assert sorted(first_epoch.tolist()) == list(range(9))  # each example once per epoch
    with pytest.raises(ConfigError, match="batch_size"):
        od.Minibatches(10, 0)


def test_bad_loss_calls_are_config_errors() -> None:
    """The order of calls (construction errors are in tests/test_bad_inputs.py's catalogue)."""
    reg = od.DEELBo(_net(), n_train=16, head=("head.",))
    x, y = _data()
    with pytest.raises(ConfigError, match="before a sampled forward"):
        reg.loss(torch.tensor(1.0, dtype=torch.float64))
    reg.train()
    out = reg(x)
    with pytest.raises(ConfigError, match=r"0-d float tensor, got \(16,\)"):
        reg.loss(nn.functional.cross_entropy(out, y, reduction="none"))
    with pytest.raises(ConfigError, match="got float"):
        reg.loss(1.0)  # type: ignore[arg-type]
    reg.loss(nn.functional.cross_entropy(out, y))
    with pytest.raises(ConfigError, match="before a sampled forward"):  # one loss per sampled forward
        reg.loss(nn.functional.cross_entropy(out, y))
    reg.eval()
    reg(x)  # mean weights: nothing to pair a KL with
    with pytest.raises(ConfigError, match="before a sampled forward"):
        reg.loss(nn.functional.cross_entropy(reg(x), y))
    with pytest.raises(ConfigError, match="optuna trial"):
        od.report_learned("trial", reg)


def test_token_level_language_model_loss() -> None:
    """A next-token loss over (batch, time): its mean over all tokens is the NLL DEELBo takes."""
    torch.manual_seed(0)
    vocab, width = 11, 8
    model = nn.Sequential(nn.Embedding(vocab, width), nn.Linear(width, vocab))
    tokens = torch.randint(0, vocab, (4, 9), generator=torch.Generator().manual_seed(2))
    reg = od.DEELBo(model, n_train=4 * 8, prior="l2-zero", head=("1.",))
    optimizer = torch.optim.SGD(reg.parameters(), lr=0.5, momentum=0.9)
    reg.train()
    first = None
    for _ in range(30):
        logits = reg(tokens[:, :-1])  # (B, T, vocab)
        nll = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        loss = reg.loss(nll)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first and math.isfinite(reg.lam) and reg.tau is not None


def test_posterior_state_round_trips_and_refuses_another_model() -> None:
    """The checkpoints of the Lightning and Hugging Face integrations hold this state beside the weights."""
    torch.manual_seed(0)
    a = od.DEELBo(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), 10, "l2-zero", head=("1.",))
    with torch.no_grad():
        for rho in a.sigma_parameters():
            rho.fill_(-3.0)
    state = a.posterior_state()
    assert state and not any(k.startswith("model.") for k in state)
    b = od.DEELBo(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), 10, "l2-zero", head=("1.",))
    b.load_posterior_state(state)
    assert b.sigma == pytest.approx(a.sigma)
    other = od.DEELBo(nn.Linear(4, 2), 10, "l2-zero")  # no head: the head's prior and rho are unexpected
    with pytest.raises(od.ConfigError, match="does not fit this model"):
        other.load_posterior_state(state)
    wider = od.DEELBo(nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)), 10, "l2-zero", head=("1.",))
    with pytest.raises(od.ConfigError, match=r"does not fit this model.*size mismatch"):
        wider.load_posterior_state(state)


def test_a_parameter_pruned_mid_run_is_refused_with_the_fix() -> None:
    """Lightning's ModelPruning tests: torch.nn.utils.prune renames ``weight`` to ``weight_orig`` (a KeyError deep in
    the posterior's draw before)."""
    model = _net()
    reg = od.DEELBo(model, n_train=16, head=("head.",))
    x, y = _data()
    from torch.nn.utils import prune

    prune.l1_unstructured(model.body[0], "weight", amount=0.5)
    with pytest.raises(od.ConfigError, match=r"no longer has the parameter 'body.0.weight' \(body.0.weight_orig"):
        reg.loss(nn.functional.cross_entropy(reg(x), y))
