"""Tests for :mod:`optuna_deelbo.bayes._objectives`: MAP and DE-ELBo losses against hand computations.

Everything runs in float64 on a tiny body/head network. Note that both objectives evaluate
the cross-entropy on ``logits.float()``, so the NLL is float32-accurate (~1e-7 relative) even
for a float64 model; the KL and the penalty stay in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from _nets import D_ALL, D_BODY, D_HEAD, F64, Net, make_net
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes import DEELBo
from optuna_deelbo.bayes._objectives import DEELBoObjective, LossRecord, MAPObjective
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import GaussianPrior, IsotropicGaussian, LowRankGaussian


def batch(n: int = 12, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)


def offset_prior(net: Net, groups: ParameterGroups, scale: float = 0.3, seed: int = 2) -> IsotropicGaussian:
    """An L2-SP style prior whose mean is the body weights plus a fixed offset (non-zero mean)."""
    body = groups.flat(dict(net.named_parameters()), "body").detach()
    gen = torch.Generator().manual_seed(seed)
    return IsotropicGaussian(body + scale * torch.randn(body.shape, generator=gen, dtype=F64))


def lowrank_prior(net: Net, groups: ParameterGroups, seed: int = 3) -> LowRankGaussian:
    body = groups.flat(dict(net.named_parameters()), "body").detach()
    gen = torch.Generator().manual_seed(seed)
    mean = body + 0.2 * torch.randn(body.shape, generator=gen, dtype=F64)
    diagonal = 0.5 + torch.rand(body.shape, generator=gen, dtype=F64)
    factor = 0.3 * torch.randn(body.shape[0], 2, generator=gen, dtype=F64)
    return LowRankGaussian(mean, diagonal, factor)


def make_prior(kind: str, net: Net, groups: ParameterGroups) -> GaussianPrior:
    return offset_prior(net, groups) if kind == "isotropic" else lowrank_prior(net, groups)


def num(t: Tensor) -> float:
    """A 0-d tensor as a Python float (detached first)."""
    return float(t.detach())


def record_at(objective: DEELBoObjective, x: Tensor, y: Tensor, seed: int = 0) -> LossRecord:
    torch.manual_seed(seed)
    return objective(x, y)


def hand_kl(objective: DEELBoObjective, detach_lam: bool = True, lam_scale: float = 1.0) -> Tensor:
    """``KL(q || p(lam*)) + KL_head(q || p(tau*))`` from the priors' public ``kl`` / ``optimal_variance``."""
    post = objective.deelbo.posterior
    total = torch.zeros((), dtype=F64)
    priors = [("body", objective.body_prior), ("head", objective.head_prior)]
    for group, prior in priors:
        if prior is None:
            continue
        theta, sigma = post.flat_mean(group), post.flat_sigma(group)  # type: ignore[arg-type]
        lam = prior.optimal_variance(theta, sigma) * lam_scale
        total = total + prior.kl(theta, sigma, lam.detach() if detach_lam else lam)
    return total


# --- MAP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3, 0.7])
def test_map_loss_matches_hand_computation(weight_decay: float) -> None:
    net, groups = make_net()
    prior = offset_prior(net, groups)
    objective = MAPObjective(net, groups, prior, weight_decay)
    x, y = batch()
    record = objective(x, y)
    logits = net(x)
    nll = nn.functional.cross_entropy(logits, y)
    params = dict(net.named_parameters())
    body = groups.flat(params, "body")
    head = groups.flat(params, "head")
    maha = ((body - prior.mean) ** 2).sum() + (head**2).sum()
    assert num(maha) > 1.0  # the offset mean matters
    penalty = weight_decay / 2 * maha
    torch.testing.assert_close(record.nll.double(), nll, rtol=1e-6, atol=0)
    torch.testing.assert_close(record.penalty.double(), penalty, rtol=1e-12, atol=0)
    torch.testing.assert_close(record.loss.double(), nll + penalty, rtol=1e-6, atol=0)
    assert record.lam is None
    assert record.tau is None
    if weight_decay == 0:
        assert num(record.penalty) == 0.0
        assert num(record.loss) == num(record.nll)


def test_map_gradient_of_penalty_pulls_towards_prior_mean() -> None:
    net, groups = make_net()
    prior = offset_prior(net, groups)
    wd = 0.5
    objective = MAPObjective(net, groups, prior, wd)
    x, y = batch()
    objective(x, y).penalty.backward()
    params = dict(net.named_parameters())
    grad_body = torch.cat([params[n].grad.reshape(-1) for n in groups.body])  # type: ignore[union-attr]
    grad_head = torch.cat([params[n].grad.reshape(-1) for n in groups.head])  # type: ignore[union-attr]
    torch.testing.assert_close(grad_body, wd * (groups.flat(params, "body").detach() - prior.mean))
    torch.testing.assert_close(grad_head, wd * groups.flat(params, "head").detach())


def test_map_with_lowrank_prior_uses_its_precision() -> None:
    net, groups = make_net()
    prior = lowrank_prior(net, groups)
    objective = MAPObjective(net, groups, prior, 0.4)
    record = objective(*batch())
    params = dict(net.named_parameters())
    diff = groups.flat(params, "body").detach() - prior.mean
    dense = torch.diag(prior.diagonal) + prior.factor @ prior.factor.T
    maha = diff @ torch.linalg.solve(dense, diff) + (groups.flat(params, "head").detach() ** 2).sum()
    torch.testing.assert_close(record.penalty.detach(), 0.2 * maha, rtol=1e-10, atol=0)


@pytest.mark.parametrize("weight_decay", [-1e-8, -1.0, math.nan, math.inf])
def test_map_bad_weight_decay_raises(weight_decay: float) -> None:
    net, groups = make_net()
    with pytest.raises(ConfigError, match="weight_decay"):
        MAPObjective(net, groups, offset_prior(net, groups), weight_decay)


def test_map_wrong_prior_length_raises() -> None:
    net, groups = make_net()
    with pytest.raises(ConfigError, match=rf"{D_BODY + 1}.*{D_BODY}"):
        MAPObjective(net, groups, IsotropicGaussian.zero(D_BODY + 1, dtype=F64), 0.1)
    with pytest.raises(ConfigError, match=rf"head.*{D_HEAD - 1}.*{D_HEAD}"):
        MAPObjective(net, groups, IsotropicGaussian.zero(D_BODY, dtype=F64), 0.1, IsotropicGaussian.zero(D_HEAD - 1))


# --- DE-ELBo: construction ------------------------------------------------------------------


@pytest.mark.parametrize("n_train", [1, 20, 83, 1000])
def test_deelbo_default_kappa_is_d_over_n(n_train: int) -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, n_train, offset_prior(net, groups), head=groups))
    assert objective.deelbo.num_weights == D_ALL
    assert objective.deelbo.n_train == n_train
    assert objective.deelbo.kappa == pytest.approx(D_ALL / n_train, rel=1e-15)


def test_deelbo_default_kappa_counts_only_trainable_weights() -> None:
    net, _ = make_net()
    net.body[1].requires_grad_(False)  # freeze BatchNorm's affine weights (16)
    groups = ParameterGroups.split(net, ("head.",))
    prior = IsotropicGaussian.zero(D_BODY - 16, dtype=F64)
    objective = DEELBoObjective(DEELBo(net, 10, prior, head=groups))
    assert objective.deelbo.kappa == pytest.approx((D_ALL - 16) / 10)


def test_deelbo_without_head_counts_body_only() -> None:
    net, _ = make_net()
    groups = ParameterGroups.split(net)
    objective = DEELBoObjective(DEELBo(net, 13, IsotropicGaussian.zero(D_ALL, dtype=F64), head=groups))
    assert objective.head_prior is None
    assert objective.deelbo.kappa == pytest.approx(D_ALL / 13)
    record = record_at(objective, *batch())
    assert record.tau is None
    assert record.lam is not None


@pytest.mark.parametrize("kappa", [1.0, 0.25, 37.5])
def test_deelbo_explicit_kappa_overrides_default(kappa: float) -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, 20, offset_prior(net, groups), head=groups, kappa=kappa))
    assert objective.deelbo.kappa == kappa


@pytest.mark.parametrize("kappa", [0.0, -1.0, math.nan, math.inf])
def test_deelbo_bad_kappa_raises(kappa: float) -> None:
    net, groups = make_net()
    with pytest.raises(ConfigError, match="kappa"):
        DEELBoObjective(DEELBo(net, 20, offset_prior(net, groups), head=groups, kappa=kappa))


@pytest.mark.parametrize("n_train", [0, -5, 2.5])
def test_deelbo_bad_n_train_raises(n_train: float) -> None:
    net, groups = make_net()
    with pytest.raises(ConfigError, match="n_train"):
        DEELBoObjective(DEELBo(net, n_train, offset_prior(net, groups), head=groups))  # type: ignore[arg-type]


@pytest.mark.parametrize("dim", [D_BODY - 1, D_BODY + 1, D_ALL])
def test_deelbo_wrong_body_prior_length_raises_with_sizes(dim: int) -> None:
    net, groups = make_net()
    with pytest.raises(ConfigError) as info:
        DEELBoObjective(DEELBo(net, 20, IsotropicGaussian.zero(dim, dtype=F64), head=groups))
    message = str(info.value)
    assert "body" in message
    assert str(dim) in message
    assert str(D_BODY) in message


def test_deelbo_extra_parameters_are_the_posterior_rhos() -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, 20, offset_prior(net, groups), head=groups, sigma_mode="layer"))
    extra = list(objective.extra_parameters())
    assert len(extra) == len(groups.body) + len(groups.head)
    assert all(any(e is r for r in objective.deelbo.posterior.rho.values()) for e in extra)
    model_ids = {id(p) for p in net.parameters()}
    assert not any(id(e) in model_ids for e in extra)


def test_deelbo_casts_prior_to_model_dtype() -> None:
    net, groups = make_net()
    prior = IsotropicGaussian.zero(D_BODY, dtype=torch.float32)
    objective = DEELBoObjective(DEELBo(net, 20, prior, head=groups))
    assert objective.body_prior.mean.dtype == F64
    assert objective.head_prior is not None
    assert objective.head_prior.mean.dtype == F64
    assert objective.head_prior.dim == D_HEAD


# --- DE-ELBo: the loss ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["scalar", "layer"])
@pytest.mark.parametrize("kind", ["isotropic", "lowrank"])
def test_deelbo_loss_is_nll_plus_scaled_kl(mode: str, kind: str) -> None:
    net, groups = make_net()
    prior = make_prior(kind, net, groups)
    objective = DEELBoObjective(DEELBo(net, 30, prior, head=groups, sigma_mode=mode, init_sigma=0.05))  # type: ignore[arg-type]
    # non-uniform sigmas so the per-weight code paths matter
    with torch.no_grad():
        for k, rho in enumerate(objective.deelbo.posterior.rho.values()):
            rho.add_(0.3 * k)
    x, y = batch()
    record = record_at(objective, x, y, seed=4)
    kl = hand_kl(objective)
    assert num(kl) > 0
    torch.testing.assert_close(record.penalty, kl, rtol=1e-10, atol=0)
    torch.testing.assert_close(record.loss, record.nll + kl / (objective.deelbo.kappa * 30), rtol=1e-10, atol=0)
    # the NLL is that of the module run with one draw from q (the same draw under the same seed)
    torch.manual_seed(4)
    draw = objective.deelbo.posterior.sample()
    logits = torch.func.functional_call(net, draw, (x,))
    torch.testing.assert_close(record.nll.double(), nn.functional.cross_entropy(logits, y), rtol=1e-6, atol=0)
    # lam and tau are the priors' closed-form optimum, detached
    post = objective.deelbo.posterior
    lam = objective.body_prior.optimal_variance(post.flat_mean("body"), post.flat_sigma("body"))
    assert objective.head_prior is not None
    tau = objective.head_prior.optimal_variance(post.flat_mean("head"), post.flat_sigma("head"))
    assert record.lam is not None
    assert record.tau is not None
    torch.testing.assert_close(record.lam, lam.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(record.tau, tau.detach(), rtol=1e-12, atol=0)
    assert not record.lam.requires_grad
    assert not record.tau.requires_grad


def test_deelbo_lam_is_argmin_of_kl() -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, 30, offset_prior(net, groups), head=groups, init_sigma=0.1))
    record = record_at(objective, *batch())
    assert record.lam is not None
    post = objective.deelbo.posterior
    theta, sigma = post.flat_mean("body").detach(), post.flat_sigma("body").detach()
    at_opt = num(objective.body_prior.kl(theta, sigma, record.lam))
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert num(objective.body_prior.kl(theta, sigma, record.lam * factor)) > at_opt


def test_deelbo_sample_changes_nll_but_not_kl() -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, 30, offset_prior(net, groups), head=groups, init_sigma=0.3))
    x, y = batch()
    a = record_at(objective, x, y, seed=0)
    b = record_at(objective, x, y, seed=1)
    c = record_at(objective, x, y, seed=0)
    assert num(a.nll) != num(b.nll)
    assert num(a.nll) == num(c.nll)
    assert num(a.penalty) == num(b.penalty)


@pytest.mark.parametrize("mode", ["scalar", "layer"])
@pytest.mark.parametrize("kind", ["isotropic", "lowrank"])
def test_deelbo_gradient_with_detached_lam_equals_full_gradient(mode: str, kind: str) -> None:
    """Envelope theorem: dKL/dlam = 0 at lam*, so detaching lam* loses no gradient."""
    net, groups = make_net()
    objective = DEELBoObjective(
        DEELBo(net, 25, make_prior(kind, net, groups), head=groups, sigma_mode=mode, init_sigma=0.05)
    )
    params = list(net.parameters()) + list(objective.extra_parameters())
    x, y = batch()
    scale = objective.deelbo.kappa * objective.deelbo.n_train

    record = record_at(objective, x, y, seed=7)
    got = torch.autograd.grad(record.loss, params)

    torch.manual_seed(7)
    nll = nn.functional.cross_entropy(objective.deelbo.posterior.forward_sample(x).float(), y)
    full = torch.autograd.grad(nll + hand_kl(objective, detach_lam=False) / scale, params)
    for g, f in zip(got, full, strict=True):
        torch.testing.assert_close(g, f, rtol=1e-9, atol=1e-12)

    # the KL's own gradient is not trivially zero ...
    kl_grad = torch.autograd.grad(hand_kl(objective, detach_lam=True), params, allow_unused=True)
    assert any(g is not None and float(g.abs().max()) > 1e-3 for g in kl_grad)
    # ... and away from the optimum, detaching lam is *not* the same as differentiating through it
    off_detached = torch.autograd.grad(hand_kl(objective, True, lam_scale=2.0), params, allow_unused=True)
    off_full = torch.autograd.grad(hand_kl(objective, False, lam_scale=2.0), params, allow_unused=True)
    assert any(
        a is not None and b is not None and not torch.allclose(a, b, rtol=1e-6, atol=1e-9)
        for a, b in zip(off_detached, off_full, strict=True)
    )


def test_deelbo_gradients_reach_model_and_rho() -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, 25, offset_prior(net, groups), head=groups, sigma_mode="layer"))
    record_at(objective, *batch()).loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    for key, rho in objective.deelbo.posterior.rho.items():
        assert rho.grad is not None and float(rho.grad.abs()) > 0, key


def test_plain_elbo_weights_kl_more_than_default_when_d_exceeds_n() -> None:
    n_train = 20
    assert n_train < D_ALL
    x, y = batch()
    net, groups = make_net()
    default = DEELBoObjective(DEELBo(net, n_train, offset_prior(net, groups), head=groups))
    net2, groups2 = make_net()
    plain = DEELBoObjective(DEELBo(net2, n_train, offset_prior(net2, groups2), head=groups2, kappa=1.0))
    rec_default = record_at(default, x, y)
    rec_plain = record_at(plain, x, y)
    # identical models, priors and draws: only the KL weight differs
    assert num(rec_default.nll) == num(rec_plain.nll)
    torch.testing.assert_close(rec_default.penalty, rec_plain.penalty, rtol=1e-14, atol=0)
    w_default = num((rec_default.loss - rec_default.nll) / rec_default.penalty)
    w_plain = num((rec_plain.loss - rec_plain.nll) / rec_plain.penalty)
    assert w_default == pytest.approx(1 / D_ALL, rel=1e-6)
    assert w_plain == pytest.approx(1 / n_train, rel=1e-6)
    assert w_plain > w_default
    assert num(rec_plain.loss) > num(rec_default.loss)


@pytest.mark.parametrize(("n_train", "kappa"), [(20, None), (500, None), (20, 1.0), (64, 3.5)])
@pytest.mark.parametrize("lam", [1e-4, 0.3, 12.0])
def test_equivalent_weight_decay(n_train: int, kappa: float | None, lam: float) -> None:
    net, groups = make_net()
    objective = DEELBoObjective(DEELBo(net, n_train, offset_prior(net, groups), head=groups, kappa=kappa))
    expected = 1.0 / (lam * objective.deelbo.kappa * n_train)
    assert objective.deelbo.equivalent_weight_decay(lam) == pytest.approx(expected, rel=1e-15)
    if kappa is None:  # kappa = D / N makes it independent of N
        assert objective.deelbo.equivalent_weight_decay(lam) == pytest.approx(1.0 / (lam * D_ALL), rel=1e-14)


def test_equivalent_weight_decay_matches_map_penalty() -> None:
    """The DE-ELBo's mean-dependent KL term per example equals MAP's penalty at that weight decay."""
    net, groups = make_net()
    prior = offset_prior(net, groups)
    objective = DEELBoObjective(DEELBo(net, 40, prior, head=groups, init_sigma=0.05))
    lam = 0.37
    wd = objective.deelbo.equivalent_weight_decay(lam)
    theta = objective.deelbo.posterior.flat_mean("body")
    sigma = objective.deelbo.posterior.flat_sigma("body")
    kl_per_example = prior.kl(theta, sigma, lam) / (objective.deelbo.kappa * objective.deelbo.n_train)
    kl_without_mean = prior.kl(prior.mean.clone(), sigma, lam) / (objective.deelbo.kappa * objective.deelbo.n_train)
    map_penalty = wd / 2 * prior.mahalanobis(theta)
    torch.testing.assert_close(kl_per_example - kl_without_mean, map_penalty, rtol=1e-10, atol=0)


# --- numerical safety: lambda, tau and sigma stay positive and finite in float32 and bfloat16 -----


@pytest.mark.parametrize("precision", ["float32+autocast", "bfloat16"])
@pytest.mark.parametrize("sigma_mode", ["scalar", "layer"])
@pytest.mark.parametrize("rho", [-1e4, -200.0, -30.0, 5.0])
@pytest.mark.parametrize("kind", ["isotropic", "lowrank"])
def test_deelbo_stays_finite_at_theta_equal_mu_and_extreme_sigma(
    precision: str, sigma_mode: str, rho: float, kind: str
) -> None:
    """theta = mu (a fresh L2-SP-style prior) with sigma from the floor (1e-12) to ~5, in low precision.

    Without the sigma floor, rho <= -104 makes sigma 0 in float32 / bfloat16 and lambda* = 0,
    KL = NaN; with it lambda*, tau*, the loss and every gradient are finite, lambda* and tau* > 0.
    """
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    torch.manual_seed(0)
    net = Net().to(dtype)
    groups = ParameterGroups.split(net, ("head.",))
    body = groups.flat(dict(net.named_parameters()), "body").detach().clone()
    if kind == "isotropic":
        prior: GaussianPrior = IsotropicGaussian(body)
    else:
        gen = torch.Generator().manual_seed(3)
        prior = LowRankGaussian(
            body, 0.5 + torch.rand(D_BODY, generator=gen), 0.3 * torch.randn(D_BODY, 2, generator=gen)
        )
    objective = DEELBoObjective(DEELBo(net, 12, prior, head=groups, sigma_mode=sigma_mode))  # type: ignore[arg-type]
    with torch.no_grad():
        for r in objective.extra_parameters():
            r.fill_(rho)
    x, y = batch()
    record = objective(x.to(dtype), y, amp=precision != "bfloat16")
    for value in (record.lam, record.tau):
        assert value is not None and value.dtype == dtype
        assert bool(torch.isfinite(value)) and float(value) > 0
    assert bool(torch.isfinite(record.loss)) and bool(torch.isfinite(record.penalty))
    record.loss.backward()
    for p in [*net.parameters(), *objective.extra_parameters()]:
        assert p.grad is not None and bool(torch.all(torch.isfinite(p.grad)))


def test_deelbo_objective_takes_a_ready_deelbo_and_says_how_to_build_one() -> None:
    """The objective wraps one DEELBo (0.4): a model in its place is refused with the call to write instead."""
    net, groups = make_net()
    with pytest.raises(TypeError, match=r"takes an od\.DEELBo, got Net.*DEELBoObjective\(od\.DEELBo\(model"):
        DEELBoObjective(net)  # type: ignore[arg-type]
    deelbo = DEELBo(net, 20, offset_prior(net, groups), head=groups)
    objective = DEELBoObjective(deelbo)
    assert objective.model is net and objective.groups is groups and objective.weight_posterior() is deelbo.posterior
    assert objective.body_prior is deelbo.body_prior and objective.head_prior is deelbo.head_prior
    assert all(key.startswith("deelbo.") for key in objective.state_dict())  # the model registered once
