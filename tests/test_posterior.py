"""Tests for :mod:`optuna_deelbo.bayes._posterior`: the body/head split and the diagonal Gaussian q.

A tiny ``body`` (Linear + BatchNorm1d + ReLU) / ``head`` (Linear) network in float64 keeps
everything exact and fast; sampling is made reproducible with explicit ``torch.Generator`` s.
"""

from __future__ import annotations

import math

import pytest
import torch
from _nets import D_BODY, D_HEAD, F64, Net, make_net
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes._posterior import POSTERIOR_SIGMA_MODES, SIGMA_FLOOR, ParameterGroups, WeightPosterior

BODY = ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias")
HEAD = ("head.weight", "head.bias")
SHAPES = {
    "body.0.weight": (8, 4),
    "body.0.bias": (8,),
    "body.1.weight": (8,),
    "body.1.bias": (8,),
    "head.weight": (3, 8),
    "head.bias": (3,),
}


def make_posterior(
    sigma_mode: str = "scalar", init_sigma: float = 0.1, seed: int = 0
) -> tuple[Net, ParameterGroups, WeightPosterior]:
    net, groups = make_net(seed)
    return net, groups, WeightPosterior(net, groups, sigma_mode=sigma_mode, init_sigma=init_sigma)  # type: ignore[arg-type]


def rho_key(mode: str, name: str) -> str:
    """The key of ``name``'s ``rho`` in :attr:`WeightPosterior.rho` under ``mode``."""
    if mode == "scalar":
        return "head" if name in HEAD else "body"
    return name.replace(".", "/")


def inputs(n: int = 16, seed: int = 1) -> Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --- ParameterGroups ------------------------------------------------------------------------


def test_split_by_prefix() -> None:
    groups = ParameterGroups.split(make_net()[0], ("head.",))
    assert groups.body == BODY
    assert groups.head == HEAD


def test_split_without_prefixes_puts_everything_in_body() -> None:
    groups = ParameterGroups.split(make_net()[0])
    assert groups.body == BODY + HEAD
    assert groups.head == ()


def test_split_with_several_prefixes() -> None:
    groups = ParameterGroups.split(make_net()[0], ("head.", "body.1."))
    assert groups.body == ("body.0.weight", "body.0.bias")
    assert groups.head == ("body.1.weight", "body.1.bias", *HEAD)


def test_split_prefix_matching_nothing_raises() -> None:
    with pytest.raises(ConfigError, match="fc"):
        ParameterGroups.split(make_net()[0], ("fc.",))


def test_split_everything_in_head_raises() -> None:
    with pytest.raises(ConfigError, match="head"):
        ParameterGroups.split(make_net()[0], ("body.", "head."))


def test_split_no_trainable_parameters_raises() -> None:
    net = make_net()[0]
    net.requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable"):
        ParameterGroups.split(net)
    with pytest.raises(ConfigError, match="trainable"):
        ParameterGroups.split(nn.ReLU())


def test_split_excludes_frozen_parameters() -> None:
    net = make_net()[0]
    net.body[0].weight.requires_grad_(False)
    net.head.bias.requires_grad_(False)
    groups = ParameterGroups.split(net, ("head.",))
    assert groups.body == ("body.0.bias", "body.1.weight", "body.1.bias")
    assert groups.head == ("head.weight",)
    assert groups.numel(net, "body") == 8 + 8 + 8
    assert groups.numel(net, "head") == 24
    # a head made only of frozen weights matches nothing trainable
    net.head.weight.requires_grad_(False)
    with pytest.raises(ConfigError):
        ParameterGroups.split(net, ("head.",))


def test_flat_and_numel() -> None:
    net = make_net()[0]
    groups = ParameterGroups.split(net, ("head.",))
    params = dict(net.named_parameters())
    assert groups.numel(net, "body") == D_BODY
    assert groups.numel(net, "head") == D_HEAD
    body = groups.flat(params, "body")
    assert body.shape == (D_BODY,)
    expected = torch.cat([params[n].reshape(-1) for n in BODY])
    assert torch.equal(body, expected)
    assert torch.equal(groups.flat(params, "head")[:24], params["head.weight"].reshape(-1))


# --- WeightPosterior: construction ----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("scalar", {"body": (), "head": ()}),
        ("layer", {n.replace(".", "/"): () for n in BODY + HEAD}),
        ("parameter", {n.replace(".", "/"): SHAPES[n] for n in BODY + HEAD}),
    ],
)
def test_rho_parameters_per_mode(mode: str, expected: dict[str, tuple[int, ...]]) -> None:
    _, _, post = make_posterior(mode, init_sigma=0.03)
    shapes = {k: tuple(v.shape) for k, v in post.rho.items()}
    assert shapes == expected
    rhos = list(post.sigma_parameters())
    assert len(rhos) == len(expected)
    for rho in rhos:
        assert rho.requires_grad
        assert rho.dtype == F64
        torch.testing.assert_close(nn.functional.softplus(rho), torch.full_like(rho, 0.03), rtol=1e-12, atol=0)


def test_scalar_mode_without_head_has_only_body_rho() -> None:
    net = make_net()[0]
    post = WeightPosterior(net, ParameterGroups.split(net), "scalar", 0.5)
    assert list(post.rho.keys()) == ["body"]
    assert post.flat_sigma("body").shape == ()


@pytest.mark.parametrize("init_sigma", [1e-6, 1e-3, 0.5, 3.0, 40.0])
def test_init_sigma_round_trips_through_softplus(init_sigma: float) -> None:
    _, _, post = make_posterior("layer", init_sigma=init_sigma)
    for sigma in post.sigmas().values():
        assert float(sigma.detach()) == pytest.approx(init_sigma, rel=1e-9)
    assert post.mean_sigma() == pytest.approx(init_sigma, rel=1e-9)


@pytest.mark.parametrize("mode", POSTERIOR_SIGMA_MODES)
def test_flat_sigma_and_flat_mean(mode: str) -> None:
    net, _, post = make_posterior(mode, init_sigma=0.2)
    params = dict(net.named_parameters())
    for group, names, dim in (("body", BODY, D_BODY), ("head", HEAD, D_HEAD)):
        sigma = post.flat_sigma(group)  # type: ignore[arg-type]
        if mode == "scalar":
            assert sigma.shape == ()
        else:
            assert sigma.shape == (dim,)
        torch.testing.assert_close(sigma, torch.full_like(sigma, 0.2))
        mean = post.flat_mean(group)  # type: ignore[arg-type]
        assert torch.equal(mean, torch.cat([params[n].reshape(-1) for n in names]))
        # the mean *is* the module's parameters (a view-free concatenation, differentiable)
        assert mean.requires_grad


def test_flat_sigma_follows_per_layer_rho_order() -> None:
    _, _, post = make_posterior("layer", init_sigma=0.1)
    with torch.no_grad():
        for k, (key, rho) in enumerate(post.rho.items()):
            rho.fill_(math.log(math.expm1(0.1 * (k + 1))))  # sigma_k = 0.1 * (k + 1)
            assert key == (BODY + HEAD)[k].replace(".", "/")
    body = post.flat_sigma("body")
    expected = torch.cat([torch.full((math.prod(SHAPES[n]),), 0.1 * (k + 1), dtype=F64) for k, n in enumerate(BODY)])
    torch.testing.assert_close(body, expected)
    head = post.flat_sigma("head")
    torch.testing.assert_close(head[:24], torch.full((24,), 0.5, dtype=F64))
    torch.testing.assert_close(head[24:], torch.full((3,), 0.6, dtype=F64))
    # mean_sigma is the weight-count-weighted average
    sizes = [math.prod(SHAPES[n]) for n in BODY + HEAD]
    expected_mean = sum(0.1 * (k + 1) * s for k, s in enumerate(sizes)) / sum(sizes)
    assert post.mean_sigma() == pytest.approx(expected_mean, rel=1e-12)


def test_means_are_the_module_parameters_not_copies() -> None:
    net, _, post = make_posterior()
    params = dict(net.named_parameters())
    means = post.means()
    assert list(means) == list(BODY + HEAD)
    for name, mean in means.items():
        assert mean is params[name]


@pytest.mark.parametrize("mode", ["bogus", "Scalar", ""])
def test_bad_sigma_mode_raises(mode: str) -> None:
    net = make_net()[0]
    with pytest.raises(ConfigError, match="sigma_mode"):
        WeightPosterior(net, ParameterGroups.split(net), sigma_mode=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("init_sigma", [0.0, -1e-3, math.nan, math.inf])
def test_bad_init_sigma_raises(init_sigma: float) -> None:
    net = make_net()[0]
    with pytest.raises(ConfigError, match="init_sigma"):
        WeightPosterior(net, ParameterGroups.split(net), init_sigma=init_sigma)


# --- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", POSTERIOR_SIGMA_MODES)
def test_sample_moments_match_mean_and_sigma(mode: str) -> None:
    _, _, post = make_posterior(mode, init_sigma=0.1)
    if mode != "scalar":
        # make the sigmas differ between tensors (and, per weight, within them)
        with torch.no_grad():
            for k, rho in enumerate(post.rho.values()):
                target = 0.05 * (k + 1) * torch.ones_like(rho)
                if mode == "parameter":
                    target = target * (1 + torch.rand(rho.shape, generator=torch.Generator().manual_seed(k), dtype=F64))
                rho.copy_(torch.log(torch.expm1(target)))
    gen = torch.Generator().manual_seed(123)
    n = 4000
    with torch.no_grad():
        draws = [post.sample(gen) for _ in range(n)]
        means = post.means()
        sigmas = post.sigmas()
        for name, mean in means.items():
            stack = torch.stack([d[name] for d in draws])  # (n, *shape)
            sigma = sigmas[name].expand_as(mean)
            # standard error of the mean is sigma / sqrt(n) ~ 0.016 sigma: allow 5 of them
            assert torch.all((stack.mean(0) - mean).abs() <= 5 * sigma / math.sqrt(n)), name
            # per-weight sample std within ~8 % (SE of a std ~ 1.1 % at n = 4000); a doubled or
            # ignored sigma is off by 100 %
            ratio = stack.std(0) / sigma
            assert torch.all((ratio - 1).abs() < 0.08), (name, ratio.min(), ratio.max())
            # pooled over the tensor, much tighter
            pooled = ((stack - mean) / sigma).pow(2).mean().sqrt()
            assert float(pooled) == pytest.approx(1.0, abs=0.02), name


def test_sample_is_reproducible_with_a_generator_and_differs_without_reseeding() -> None:
    _, _, post = make_posterior("scalar", init_sigma=0.1)
    a = post.sample(torch.Generator().manual_seed(5))
    b = post.sample(torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    post.sample(gen)
    c = post.sample(gen)
    for name in a:
        assert torch.equal(a[name], b[name])
        assert not torch.equal(a[name], c[name])


@pytest.mark.parametrize("mode", POSTERIOR_SIGMA_MODES)
def test_sample_gradients_reach_means_and_rho(mode: str) -> None:
    """Reparameterisation: d(sum w~)/d theta = 1, d(sum w~)/d rho = sum(eps * sigmoid(rho))."""
    net, _, post = make_posterior(mode, init_sigma=0.3)
    draw = post.sample(torch.Generator().manual_seed(9))
    total = sum((w * w).sum() for w in draw.values())
    assert isinstance(total, Tensor)
    total.backward()
    # replay eps with the same generator to compute the exact gradients by hand
    gen = torch.Generator().manual_seed(9)
    params = dict(net.named_parameters())
    expected_rho: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in post.rho.items()}
    for name in BODY + HEAD:
        mean = params[name]
        eps = torch.randn(mean.shape, dtype=F64, generator=gen)
        w = draw[name].detach()
        assert mean.grad is not None
        torch.testing.assert_close(mean.grad, 2 * w)
        key = rho_key(mode, name)
        rho = post.rho[key].detach()
        contrib = 2 * w * eps * torch.sigmoid(rho)
        expected_rho[key] += contrib.sum() if rho.ndim == 0 else contrib
    for key, rho in post.rho.items():
        assert rho.grad is not None
        torch.testing.assert_close(rho.grad, expected_rho[key])


def test_forward_sample_updates_batchnorm_buffers_and_leaves_parameters_alone() -> None:
    net, _, post = make_posterior("parameter", init_sigma=0.2)
    net.train()
    bn = net.body[1]
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in net.named_parameters()}
    x = inputs(32)
    assert torch.count_nonzero(bn.running_mean) == 0
    out = post.forward_sample(x, generator=torch.Generator().manual_seed(3))
    assert out.shape == (32, 3)
    # running_mean = 0.1 * batch mean of the pre-BN activations under the *sampled* weights
    draw = post.sample(torch.Generator().manual_seed(3))
    pre_bn = x @ draw["body.0.weight"].T + draw["body.0.bias"]
    torch.testing.assert_close(bn.running_mean, 0.1 * pre_bn.detach().mean(0))
    assert int(bn.num_batches_tracked) == 1
    # the mean-weight activations would have given a different running mean
    mean_pre_bn = net.body[0](x).detach()
    assert not torch.allclose(bn.running_mean, 0.1 * mean_pre_bn.mean(0))
    for name, p in net.named_parameters():
        ptr, value = before[name]
        assert p.data_ptr() == ptr
        assert torch.equal(p.detach(), value)
    # and the logits are those of the module run with the sampled weights
    hidden = torch.relu(bn_train_out(pre_bn, draw))
    expected = hidden @ draw["head.weight"].T + draw["head.bias"]
    torch.testing.assert_close(out, expected)


def bn_train_out(pre_bn: Tensor, draw: dict[str, Tensor]) -> Tensor:
    """BatchNorm1d in train mode (biased batch variance) with the sampled affine weights."""
    mean = pre_bn.mean(0)
    var = pre_bn.var(0, unbiased=False)
    return (pre_bn - mean) / torch.sqrt(var + 1e-5) * draw["body.1.weight"] + draw["body.1.bias"]


def test_forward_sample_in_eval_mode_keeps_buffers() -> None:
    net, _, post = make_posterior("scalar", init_sigma=0.2)
    net.eval()
    post.forward_sample(inputs(8))
    assert torch.count_nonzero(net.body[1].running_mean) == 0
    assert int(net.body[1].num_batches_tracked) == 0


# --- predict_proba --------------------------------------------------------------------------


def _warm_batchnorm(net: Net) -> None:
    """Give BatchNorm non-trivial running statistics so eval and train mode differ."""
    net.train()
    with torch.no_grad():
        for seed in range(5):
            net(inputs(32, seed=100 + seed) * 3 + 1)


def test_predict_proba_with_mean_weights_is_eval_softmax_and_restores_mode() -> None:
    net, _, post = make_posterior("scalar", init_sigma=0.5)
    _warm_batchnorm(net)
    net.train()
    x = inputs(10)
    running = net.body[1].running_mean.clone()
    probs = post.predict_proba(x)
    assert net.training
    assert torch.equal(net.body[1].running_mean, running)
    net.eval()
    with torch.no_grad():
        expected = torch.softmax(net(x), dim=-1)
        train_mode = torch.softmax(net.train()(x), dim=-1)
    assert probs.shape == (10, 3)
    torch.testing.assert_close(probs, expected.float())
    # eval mode matters: the train-mode (batch statistics) prediction is different
    assert not torch.allclose(probs, train_mode.float(), atol=1e-3)


def test_predict_proba_restores_eval_mode_too() -> None:
    net, _, post = make_posterior()
    net.eval()
    post.predict_proba(inputs(4), samples=2)
    assert not net.training


def test_predict_proba_with_samples_is_an_average_of_sampled_softmaxes() -> None:
    net, _, post = make_posterior("layer", init_sigma=0.5)
    _warm_batchnorm(net)
    net.train()
    x = inputs(10)
    probs = post.predict_proba(x, samples=7, generator=torch.Generator().manual_seed(2))
    assert net.training
    assert probs.shape == (10, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(10))
    assert torch.all(probs > 0)
    # replay: the same seven draws, in eval mode
    gen = torch.Generator().manual_seed(2)
    net.eval()
    with torch.no_grad():
        singles = [torch.softmax(torch.func.functional_call(net, post.sample(gen), (x,)), -1) for _ in range(7)]
    torch.testing.assert_close(probs, torch.stack(singles).mean(0).float())
    # with sigma = 0.5 the average is far from the mean-weight prediction
    assert (probs - post.predict_proba(x)).abs().max() > 1e-2


def test_predict_proba_with_tiny_sigma_approaches_mean_prediction() -> None:
    net, _, post = make_posterior("scalar", init_sigma=1e-7)
    _warm_batchnorm(net)
    x = inputs(10)
    mean_probs = post.predict_proba(x)
    sampled = post.predict_proba(x, samples=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled, mean_probs, atol=1e-5, rtol=0)


def test_predict_proba_negative_samples_raises() -> None:
    _, _, post = make_posterior()
    with pytest.raises(ConfigError, match="samples"):
        post.predict_proba(inputs(4), samples=-1)


# --- numerical safety: sigma stays positive and finite in float32 and bfloat16 ------------------


def test_init_sigma_below_the_floor_raises() -> None:
    net = make_net()[0]
    with pytest.raises(ConfigError, match=r"init_sigma must be >= the posterior std floor 1e-12"):
        WeightPosterior(net, ParameterGroups.split(net), init_sigma=1e-13)
    WeightPosterior(net, ParameterGroups.split(net), init_sigma=SIGMA_FLOOR)  # the floor itself is fine


#: rho values from "sigma underflows to 0" (softplus(-104) == 0 in float32) to "sigma is huge".
EXTREME_RHOS = (-1e4, -200.0, -104.0, -95.0, -30.0, 0.0, 30.0, 1e4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", POSTERIOR_SIGMA_MODES)
@pytest.mark.parametrize("rho", EXTREME_RHOS)
def test_sigma_positive_finite_with_finite_log_gradient(dtype: torch.dtype, mode: str, rho: float) -> None:
    """sigma = max(softplus(rho), 1e-12): never 0 or NaN, and d log(sigma) / d rho is finite (0/0 without the floor)."""
    net = make_net()[0].to(dtype)
    post = WeightPosterior(net, ParameterGroups.split(net, ("head.",)), sigma_mode=mode)  # type: ignore[arg-type]
    with torch.no_grad():
        for r in post.sigma_parameters():
            r.fill_(rho)
    expected = max(float(nn.functional.softplus(torch.tensor(rho, dtype=dtype))), SIGMA_FLOOR)
    for group in ("body", "head"):
        sigma = post.flat_sigma(group)  # type: ignore[arg-type]
        assert sigma.dtype == dtype
        assert bool(torch.all(torch.isfinite(sigma))) and bool(torch.all(sigma >= SIGMA_FLOOR * (1 - 1e-2)))
        torch.testing.assert_close(sigma.float(), torch.full_like(sigma.float(), expected), rtol=1e-2, atol=0.0)
    assert math.isfinite(post.mean_sigma()) and post.mean_sigma() > 0
    assert post.max_sigma() == pytest.approx(expected, rel=1e-2)
    log_var = sum(torch.log(s).sum() for s in post.sigmas().values())
    grads = torch.autograd.grad(log_var, list(post.sigma_parameters()))
    assert all(bool(torch.all(torch.isfinite(g))) for g in grads)


def test_floor_changes_nothing_in_the_normal_range() -> None:
    _, _, post = make_posterior("parameter", init_sigma=0.05)
    with torch.no_grad():
        for k, r in enumerate(post.sigma_parameters()):
            r.copy_(torch.linspace(-20.0, 5.0, r.numel(), dtype=F64).reshape(r.shape) + k)
    for name, sigma in post.sigmas().items():
        rho = post.rho[name.replace(".", "/")]
        assert torch.equal(sigma, nn.functional.softplus(rho))


def test_max_sigma_is_the_largest_over_all_weights() -> None:
    _, _, post = make_posterior("parameter", init_sigma=0.05)
    with torch.no_grad():
        post.rho["body/1/weight"][3] = math.log(math.expm1(0.7))
    assert post.max_sigma() == pytest.approx(0.7, rel=1e-12)
    assert post.mean_sigma() < 0.1
