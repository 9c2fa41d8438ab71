"""Property tests for :mod:`optuna_deelbo.bayes._priors`: closed forms against dense brute force.

Every random input is built from a hypothesis-drawn seed through ``torch.Generator`` so that
failures shrink to a small, reproducible case. All maths is float64 unless a test says otherwise.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import pytest
import torch
from _hypothesis_profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from torch import Tensor
from torch.distributions import MultivariateNormal, kl_divergence

from optuna_deelbo._errors import ConfigError
from optuna_deelbo.bayes._priors import GaussianPrior, IsotropicGaussian, LowRankGaussian

F64 = torch.float64
KINDS = ("lowrank", "isotropic", "isotropic-zero")

seeds = st.integers(min_value=0, max_value=2**31 - 1)
dims = st.integers(min_value=1, max_value=6)
ranks = st.integers(min_value=0, max_value=3)
kinds = st.sampled_from(KINDS)
per_params = st.booleans()

SETTINGS = settings(max_examples=examples(40), deadline=None)


class Case(NamedTuple):
    """A prior, its dense ``Sigma`` (at ``lam = 1``), and a random q and ``lam``."""

    prior: GaussianPrior
    mean: Tensor
    dense: Tensor
    theta: Tensor
    sigma: Tensor
    lam: Tensor


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=F64)


def make_prior(kind: str, gen: torch.Generator, dim: int, rank: int) -> tuple[GaussianPrior, Tensor, Tensor]:
    """``(prior, mean, dense Sigma)`` of the given family."""
    if kind == "isotropic-zero":
        prior: GaussianPrior = IsotropicGaussian.zero(dim, dtype=F64)
        return prior, torch.zeros(dim, dtype=F64), torch.eye(dim, dtype=F64)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    if kind == "isotropic":
        return IsotropicGaussian(mean.clone()), mean, torch.eye(dim, dtype=F64)
    assert kind == "lowrank"
    diagonal = torch.exp(_uniform(gen, (dim,), -1.0, 1.0))
    factor = 0.7 * torch.randn(dim, rank, generator=gen, dtype=F64)
    dense = torch.diag(diagonal) + factor @ factor.T
    return LowRankGaussian(mean.clone(), diagonal.clone(), factor.clone()), mean, dense


def make_sigma(gen: torch.Generator, dim: int, per_param: bool) -> Tensor:
    """A positive posterior std: shape ``(D,)`` if ``per_param`` else ``()``."""
    shape: tuple[int, ...] = (dim,) if per_param else ()
    return torch.exp(_uniform(gen, shape, -1.0, 1.0))


def make_case(kind: str, seed: int, dim: int, rank: int, per_param: bool) -> Case:
    gen = torch.Generator().manual_seed(seed)
    prior, mean, dense = make_prior(kind, gen, dim, rank)
    theta = mean + torch.randn(dim, generator=gen, dtype=F64)
    sigma = make_sigma(gen, dim, per_param)
    lam = torch.exp(_uniform(gen, (), -2.0, 2.0))
    return Case(prior, mean, dense, theta, sigma, lam)


def dense_posterior_cov(sigma: Tensor, dim: int) -> Tensor:
    return torch.diag((sigma**2).expand(dim)).to(F64)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# 1. closed forms vs dense brute force
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_closed_forms_match_dense(kind: str, seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case(kind, seed, dim, rank, per_param)
    prior, dense = case.prior, case.dense
    precision = torch.linalg.inv(dense)
    d = case.theta - case.mean

    assert prior.dim == dim
    close(prior.mahalanobis(case.theta), d @ precision @ d)
    close(prior.logdet_covariance(), torch.logdet(dense))
    close(prior.precision_diagonal(), torch.diagonal(precision))
    close(prior.precision_trace(), torch.trace(precision))
    s_dense = dense_posterior_cov(case.sigma, dim)
    close(prior.trace_term(case.sigma), torch.trace(precision @ s_dense))

    p = MultivariateNormal(case.mean, covariance_matrix=case.lam * dense)
    close(prior.log_prob(case.theta, case.lam), p.log_prob(case.theta))
    close(prior.log_prob(case.theta, float(case.lam)), p.log_prob(case.theta))

    q = MultivariateNormal(case.theta, covariance_matrix=s_dense)
    expected_kl = kl_divergence(q, p)
    close(prior.kl(case.theta, case.sigma, case.lam), expected_kl)
    close(prior.kl(case.theta, case.sigma, float(case.lam)), expected_kl)

    expected_lam = (torch.trace(precision @ s_dense) + d @ precision @ d) / dim
    close(prior.optimal_variance(case.theta, case.sigma), expected_lam)


@SETTINGS
@given(seed=seeds, dim=dims, rank=ranks)
def test_lowrank_rank_and_zero_factor_is_diagonal(seed: int, dim: int, rank: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    diagonal = torch.exp(_uniform(gen, (dim,), -1.0, 1.0))
    prior = LowRankGaussian(mean, diagonal, torch.zeros(dim, rank, dtype=F64))
    assert prior.rank == rank
    close(prior.precision_diagonal(), 1.0 / diagonal)
    close(prior.logdet_covariance(), torch.log(diagonal).sum())
    x = torch.randn(dim, generator=gen, dtype=F64)
    close(prior.mahalanobis(x), ((x - mean) ** 2 / diagonal).sum())


# --------------------------------------------------------------------------------------------
# 2. lam* minimises the KL
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_optimal_variance_is_argmin(kind: str, seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case(kind, seed, dim, rank, per_param)
    prior, theta, sigma = case.prior, case.theta, case.sigma
    lam_star = prior.optimal_variance(theta, sigma)
    assert lam_star.ndim == 0 and float(lam_star) > 0.0

    def kl_of_log_lam(log_lam: float) -> float:
        return float(prior.kl(theta, sigma, math.exp(log_lam)))

    res = minimize_scalar(kl_of_log_lam, bounds=(-20.0, 20.0), method="bounded", options={"xatol": 1e-10})
    assert res.success
    assert math.exp(res.x) == pytest.approx(float(lam_star), rel=1e-5)

    kl_star = prior.kl(theta, sigma, lam_star)
    for f in (0.5, 0.9, 1.1, 2.0):
        assert float(kl_star) < float(prior.kl(theta, sigma, lam_star * f))

    lam = lam_star.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.kl(theta, sigma, lam), lam)
    # d KL / d lam = 0.5 (D / lam - Q / lam^2); make it scale-free by multiplying by lam.
    assert abs(float(grad * lam_star)) <= 1e-10 * dim
    # ... and it is really non-zero away from lam* (so the check above can fail).
    lam_off = (lam_star * 1.5).detach().requires_grad_(True)
    (grad_off,) = torch.autograd.grad(prior.kl(theta, sigma, lam_off), lam_off)
    assert float(grad_off) > 0.0


@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_kl_at_optimum_matches_kl_and_total_gradient(
    kind: str, seed: int, dim: int, rank: int, per_param: bool
) -> None:
    case = make_case(kind, seed, dim, rank, per_param)
    prior = case.prior
    theta = case.theta.clone().requires_grad_(True)
    sigma = case.sigma.clone().requires_grad_(True)
    kl_opt, lam_opt = prior.kl_at_optimum(theta, sigma)
    assert not lam_opt.requires_grad
    close(lam_opt, prior.optimal_variance(case.theta, case.sigma), rtol=1e-12, atol=0.0)
    lam_total = prior.optimal_variance(theta, sigma)  # not detached: the total derivative
    kl_total = prior.kl(theta, sigma, lam_total)
    close(kl_opt.detach(), kl_total.detach(), rtol=1e-12, atol=1e-12)
    grads_opt = torch.autograd.grad(kl_opt, (theta, sigma))
    grads_total = torch.autograd.grad(kl_total, (theta, sigma))
    for g_opt, g_total in zip(grads_opt, grads_total, strict=True):
        close(g_opt, g_total)


# --------------------------------------------------------------------------------------------
# 3. scalar sigma == per-parameter sigma filled with the same value
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks)
def test_scalar_sigma_equals_filled_vector(kind: str, seed: int, dim: int, rank: int) -> None:
    case = make_case(kind, seed, dim, rank, per_param=False)
    assert case.sigma.ndim == 0
    filled = case.sigma.expand(dim).clone()
    prior, theta = case.prior, case.theta
    close(prior.kl(theta, case.sigma, case.lam), prior.kl(theta, filled, case.lam), rtol=1e-12, atol=1e-12)
    close(
        prior.optimal_variance(theta, case.sigma),
        prior.optimal_variance(theta, filled),
        rtol=1e-12,
        atol=1e-12,
    )
    close(prior.trace_term(case.sigma), prior.trace_term(filled), rtol=1e-12, atol=1e-12)
    # a 1-element sigma is the scalar as well
    close(prior.kl(theta, case.sigma.reshape(1), case.lam), prior.kl(theta, case.sigma, case.lam))


# --------------------------------------------------------------------------------------------
# 4. KL >= 0, and == 0 when q == p
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_kl_non_negative(kind: str, seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case(kind, seed, dim, rank, per_param)
    kl = case.prior.kl(case.theta, case.sigma, case.lam)
    assert kl.ndim == 0
    assert torch.isfinite(kl)
    assert float(kl) >= -1e-12
    # theta != mu here (drawn with unit noise) so the KL is strictly positive at any lam.
    lam_star = case.prior.optimal_variance(case.theta, case.sigma)
    assert float(case.prior.kl(case.theta, case.sigma, lam_star)) > 0.0


@SETTINGS
@given(seed=seeds, dim=dims, zero_mean=st.booleans(), per_param=per_params)
def test_kl_zero_when_q_equals_isotropic_prior(seed: int, dim: int, zero_mean: bool, per_param: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    lam = torch.exp(_uniform(gen, (), -2.0, 2.0))
    if zero_mean:
        prior = IsotropicGaussian.zero(dim, dtype=F64)
    else:
        prior = IsotropicGaussian(torch.randn(dim, generator=gen, dtype=F64))
    sigma = torch.sqrt(lam)
    if per_param:
        sigma = sigma.expand(dim).clone()
    theta = prior.mean.clone()
    assert abs(float(prior.kl(theta, sigma, lam))) <= 1e-10
    assert abs(float(prior.kl(theta, sigma, float(lam)))) <= 1e-10
    close(prior.optimal_variance(theta, sigma), lam, rtol=1e-12, atol=0.0)


@SETTINGS
@given(seed=seeds, dim=dims)
def test_kl_zero_when_q_equals_diagonal_lowrank_prior(seed: int, dim: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    diagonal = torch.exp(_uniform(gen, (dim,), -1.0, 1.0))
    lam = torch.exp(_uniform(gen, (), -2.0, 2.0))
    prior = LowRankGaussian(mean, diagonal, torch.zeros(dim, 0, dtype=F64))
    sigma = torch.sqrt(lam * diagonal)
    assert abs(float(prior.kl(mean.clone(), sigma, lam))) <= 1e-10
    close(prior.optimal_variance(mean.clone(), sigma), lam, rtol=1e-12, atol=0.0)


# --------------------------------------------------------------------------------------------
# 5. gradients
# --------------------------------------------------------------------------------------------
@settings(max_examples=examples(15), deadline=None)
@given(seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_kl_gradcheck_lowrank(seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case("lowrank", seed, dim, rank, per_param)
    prior = case.prior
    theta = case.theta.clone().requires_grad_(True)
    sigma = case.sigma.clone().requires_grad_(True)
    lam = case.lam.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, s, v: prior.kl(t, s, v), (theta, sigma, lam))
    assert torch.autograd.gradcheck(lambda t, s: prior.optimal_variance(t, s), (theta, sigma))
    assert torch.autograd.gradcheck(lambda t, v: prior.log_prob(t, v), (theta, lam))


@SETTINGS
@given(seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_kl_gradient_matches_closed_form(seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case("lowrank", seed, dim, rank, per_param)
    precision = torch.linalg.inv(case.dense)
    theta = case.theta.clone().requires_grad_(True)
    sigma = case.sigma.clone().requires_grad_(True)
    g_theta, g_sigma = torch.autograd.grad(case.prior.kl(theta, sigma, case.lam), (theta, sigma))
    # dKL/dtheta = Sigma^-1 (theta - mu) / lam ; dKL/dsigma_i = sigma_i P_ii / lam - 1 / sigma_i
    close(g_theta, precision @ (case.theta - case.mean) / case.lam)
    p_diag = torch.diagonal(precision)
    if per_param:
        expected_sigma = case.sigma * p_diag / case.lam - 1.0 / case.sigma
    else:
        expected_sigma = case.sigma * p_diag.sum() / case.lam - dim / case.sigma
    close(g_sigma, expected_sigma)


# --------------------------------------------------------------------------------------------
# 6. .to(dtype=float32)
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_to_float32_is_close(kind: str, seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case(kind, seed, dim, rank, per_param)
    prior64 = case.prior
    prior32 = prior64.to(dtype=torch.float32)
    assert type(prior32) is type(prior64)
    assert prior32.mean.dtype == torch.float32
    assert prior64.mean.dtype == F64  # the original is untouched
    assert prior32.precision_diagonal().dtype == torch.float32
    if isinstance(prior32, LowRankGaussian):
        assert prior32.diagonal.dtype == torch.float32
        assert prior32.factor.dtype == torch.float32
    theta32, sigma32, lam32 = case.theta.float(), case.sigma.float(), case.lam.float()

    def check(value32: Tensor, value64: Tensor, scale: float = 0.0) -> None:
        assert value32.dtype == torch.float32
        # rel 1e-4; the absolute slack covers cancellation in sums of O(scale) float32 terms
        torch.testing.assert_close(value32.double(), value64, rtol=1e-4, atol=1e-6 + 1e-6 * scale)

    check(prior32.mahalanobis(theta32), prior64.mahalanobis(case.theta))
    check(prior32.logdet_covariance(), prior64.logdet_covariance(), scale=dim)
    check(prior32.precision_diagonal(), prior64.precision_diagonal())
    check(prior32.precision_trace(), prior64.precision_trace())
    check(prior32.optimal_variance(theta32, sigma32), prior64.optimal_variance(case.theta, case.sigma))
    log_lam = abs(float(torch.log(case.lam)))
    kl_scale = float(prior64.mahalanobis(case.theta) / case.lam) + dim * (4.0 + log_lam)
    check(prior32.kl(theta32, sigma32, lam32), prior64.kl(case.theta, case.sigma, case.lam), scale=kl_scale)
    check(prior32.log_prob(theta32, lam32), prior64.log_prob(case.theta, case.lam), scale=kl_scale)


# --------------------------------------------------------------------------------------------
# 7. bad input raises ConfigError naming the problem
# --------------------------------------------------------------------------------------------
def _lowrank_parts(dim: int = 3, rank: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    diagonal = torch.ones(dim, dtype=F64)
    factor = torch.randn(dim, rank, generator=gen, dtype=F64)
    return mean, diagonal, factor


def test_error_mean_length_differs_from_diagonal() -> None:
    mean, diagonal, factor = _lowrank_parts()
    with pytest.raises(ConfigError, match=r"prior diagonal must be a flat vector of length 4"):
        LowRankGaussian(torch.zeros(4, dtype=F64), diagonal, torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ConfigError, match=r"prior diagonal must be a flat vector of length 3"):
        LowRankGaussian(mean, torch.ones(3, 1, dtype=F64), factor)


@pytest.mark.parametrize("shape", [(4, 2), (2, 2), (3,), (3, 2, 1)])
def test_error_factor_wrong_shape(shape: tuple[int, ...]) -> None:
    mean, diagonal, _ = _lowrank_parts()
    with pytest.raises(ConfigError, match=r"low-rank factor must have shape \(3, K\)"):
        LowRankGaussian(mean, diagonal, torch.zeros(shape, dtype=F64))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_error_non_positive_or_non_finite_diagonal(bad: float) -> None:
    mean, diagonal, factor = _lowrank_parts()
    diagonal[1] = bad
    with pytest.raises(ConfigError, match=r"prior diagonal must be finite and strictly positive"):
        LowRankGaussian(mean, diagonal, factor)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_error_non_finite_factor(bad: float) -> None:
    mean, diagonal, factor = _lowrank_parts()
    factor[0, 1] = bad
    with pytest.raises(ConfigError, match=r"low-rank factor must be finite"):
        LowRankGaussian(mean, diagonal, factor)


@pytest.mark.parametrize("mean", [torch.zeros(2, 3, dtype=F64), torch.zeros(0, dtype=F64), torch.tensor(1.0)])
def test_error_mean_not_a_non_empty_vector(mean: Tensor) -> None:
    with pytest.raises(ConfigError, match=r"prior mean must be a non-empty flat vector"):
        IsotropicGaussian(mean)
    with pytest.raises(ConfigError, match=r"prior mean must be a non-empty flat vector"):
        LowRankGaussian(mean, torch.ones(2, dtype=F64), torch.zeros(2, 1, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_error_integer_mean(dtype: torch.dtype) -> None:
    mean = torch.zeros(3, dtype=dtype)
    with pytest.raises(ConfigError, match=r"prior mean must be a floating-point tensor"):
        IsotropicGaussian(mean)
    with pytest.raises(ConfigError, match=r"prior mean must be a floating-point tensor"):
        LowRankGaussian(mean, torch.ones(3, dtype=F64), torch.zeros(3, 1, dtype=F64))


def _small_prior(kind: str) -> tuple[Tensor, GaussianPrior]:
    mean, diagonal, factor = _lowrank_parts()
    if kind == "lowrank":
        return mean, LowRankGaussian(mean, diagonal, factor)
    return mean, IsotropicGaussian(mean)


@pytest.mark.parametrize("kind", ["lowrank", "isotropic"])
@pytest.mark.parametrize("theta_shape", [(4,), (2,), (3, 1), ()])
def test_error_theta_wrong_shape(kind: str, theta_shape: tuple[int, ...]) -> None:
    _, prior = _small_prior(kind)
    theta = torch.zeros(theta_shape, dtype=F64)
    sigma = torch.tensor(0.5, dtype=F64)
    match = r"theta must be a flat vector of length 3"
    with pytest.raises(ConfigError, match=match):
        prior.mahalanobis(theta)
    with pytest.raises(ConfigError, match=match):
        prior.kl(theta, sigma, 1.0)
    with pytest.raises(ConfigError, match=match):
        prior.optimal_variance(theta, sigma)
    with pytest.raises(ConfigError, match=match):
        prior.log_prob(theta, 1.0)


@pytest.mark.parametrize("kind", ["lowrank", "isotropic"])
@pytest.mark.parametrize("sigma_shape", [(4,), (2,), (3, 1)])
def test_error_sigma_wrong_length(kind: str, sigma_shape: tuple[int, ...]) -> None:
    mean, prior = _small_prior(kind)
    sigma = torch.full(sigma_shape, 0.5, dtype=F64)
    match = r"sigma must be a flat vector of length 3"
    with pytest.raises(ConfigError, match=match):
        prior.kl(mean.clone(), sigma, 1.0)
    with pytest.raises(ConfigError, match=match):
        prior.optimal_variance(mean.clone(), sigma)
    with pytest.raises(ConfigError, match=match):
        prior.trace_term(sigma)


@pytest.mark.parametrize("dim", [0, -1])
def test_error_isotropic_zero_non_positive_dim(dim: int) -> None:
    with pytest.raises(ConfigError, match=rf"prior dimension must be positive, got {dim}"):
        IsotropicGaussian.zero(dim)


def test_isotropic_zero_defaults() -> None:
    prior = IsotropicGaussian.zero(4)
    assert prior.dim == 4
    assert prior.mean.dtype == torch.float32
    assert torch.equal(prior.mean, torch.zeros(4))


# --------------------------------------------------------------------------------------------
# 8. no dense D x D matrix
# --------------------------------------------------------------------------------------------
def test_large_lowrank_never_densifies() -> None:
    dim, rank = 200_000, 5
    gen = torch.Generator().manual_seed(1234)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    diagonal = torch.exp(_uniform(gen, (dim,), -1.0, 1.0))
    factor = 0.05 * torch.randn(dim, rank, generator=gen, dtype=F64)
    theta = mean + 0.1 * torch.randn(dim, generator=gen, dtype=F64)
    sigma = torch.exp(_uniform(gen, (dim,), -3.0, -2.0))

    prior64 = LowRankGaussian(mean, diagonal, factor)
    prior32 = LowRankGaussian(mean.float(), diagonal.float(), factor.float())
    assert prior32.dim == dim and prior32.rank == rank
    # nothing stored on the prior is bigger than D x K (a D x D matrix would be 4e10 entries)
    for value in vars(prior32).values():
        if isinstance(value, Tensor):
            assert value.numel() <= dim * rank

    lam32 = prior32.optimal_variance(theta.float(), sigma.float())
    kl32 = prior32.kl(theta.float(), sigma.float(), lam32)
    kl32_scalar = prior32.kl(theta.float(), torch.tensor(0.1), 1.0)
    for value in (lam32, kl32, kl32_scalar, prior32.logdet_covariance(), prior32.precision_trace()):
        assert value.ndim == 0 and bool(torch.isfinite(value))
    assert float(lam32) > 0.0
    assert float(kl32) > 0.0
    assert float(kl32_scalar) > 0.0
    assert bool(torch.all(prior32.precision_diagonal() > 0))

    # the float32 results agree with the same computation in float64
    lam64 = prior64.optimal_variance(theta, sigma)
    kl64 = prior64.kl(theta, sigma, lam64)
    assert float(lam32) == pytest.approx(float(lam64), rel=1e-4)
    assert float(kl32) == pytest.approx(float(kl64), rel=1e-4)


def test_low_rank_precomputation_is_the_same_across_row_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked float64 precomputation must agree with a dense inverse whatever the chunk size."""
    import optuna_deelbo.bayes._priors as priors_module

    g = torch.Generator().manual_seed(3)
    dim, rank = 50, 3
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    diagonal = torch.rand(dim, generator=g, dtype=torch.float64) + 0.2
    factor = torch.randn(dim, rank, generator=g, dtype=torch.float64)
    dense = torch.diag(diagonal) + factor @ factor.T
    precision = torch.linalg.inv(dense)
    theta = torch.randn(dim, generator=g, dtype=torch.float64)
    for chunk in (7, 16, 50, 1000):
        monkeypatch.setattr(priors_module, "_CHUNK_ROWS", chunk)
        prior = LowRankGaussian(mean, diagonal, factor)
        d = theta - mean
        torch.testing.assert_close(prior.mahalanobis(theta), d @ precision @ d)
        torch.testing.assert_close(prior.precision_diagonal(), torch.diagonal(precision))
        torch.testing.assert_close(prior.logdet_covariance(), torch.logdet(dense))


# --------------------------------------------------------------------------------------------
# 9. more properties: KL = 0 only at q = p, brute-force argmin, invariances
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, dim=dims, zero_mean=st.booleans(), factor=st.floats(0.2, 5.0).filter(lambda f: abs(f - 1) > 0.05))
def test_kl_positive_when_only_sigma_differs_from_the_prior(
    seed: int, dim: int, zero_mean: bool, factor: float
) -> None:
    """theta = mu but sigma != sqrt(lam): q != p, so KL > 0 (the equality case needs both to match)."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.exp(_uniform(gen, (), -2.0, 2.0))
    prior = (
        IsotropicGaussian.zero(dim, dtype=F64)
        if zero_mean
        else IsotropicGaussian(torch.randn(dim, generator=gen, dtype=F64))
    )
    theta = prior.mean.clone()
    assert float(prior.kl(theta, torch.sqrt(lam), lam)) == pytest.approx(0.0, abs=1e-10)
    kl = float(prior.kl(theta, factor * torch.sqrt(lam), lam))
    # closed form for this case: D/2 (f^2 - 1 - log f^2) > 0 for f != 1
    assert kl == pytest.approx(dim / 2 * (factor**2 - 1 - math.log(factor**2)), rel=1e-9)
    assert kl > 0.0


@SETTINGS
@given(seed=seeds, dim=st.integers(2, 6), rank=st.integers(1, 3), per_param=per_params)
def test_kl_positive_for_any_diagonal_q_under_a_correlated_prior(
    seed: int, dim: int, rank: int, per_param: bool
) -> None:
    """A diagonal q cannot equal N(mu, lam (diag(a) + U U^T)) with U != 0: KL > 0 even at theta = mu, lam*."""
    case = make_case("lowrank", seed, dim, rank, per_param)
    assert isinstance(case.prior, LowRankGaussian) and float(case.prior.factor.abs().sum()) > 0.0
    theta = case.mean.clone()
    lam_star = case.prior.optimal_variance(theta, case.sigma)
    assert float(case.prior.kl(theta, case.sigma, lam_star)) > 0.0


@SETTINGS
@given(kind=kinds, seed=seeds, dim=st.integers(1, 4), rank=ranks, per_param=per_params)
def test_optimal_variance_is_the_dense_brute_force_argmin(
    kind: str, seed: int, dim: int, rank: int, per_param: bool
) -> None:
    """Scan lam on a fine log grid with torch's dense KL (none of our closed forms): the best point is next to lam*."""
    case = make_case(kind, seed, dim, rank, per_param)
    lam_star = float(case.prior.optimal_variance(case.theta, case.sigma))
    step = 0.01
    log_grid = torch.arange(-300, 301, dtype=F64) * step + math.log(lam_star)
    covariances = torch.exp(log_grid)[:, None, None] * case.dense  # (G, D, D): one batched dense KL
    q = MultivariateNormal(
        case.theta.expand(len(log_grid), dim),
        covariance_matrix=dense_posterior_cov(case.sigma, dim).expand_as(covariances),
    )
    kls = kl_divergence(q, MultivariateNormal(case.mean.expand(len(log_grid), dim), covariance_matrix=covariances))
    best = int(torch.argmin(kls))
    assert abs(float(log_grid[best]) - math.log(lam_star)) <= step + 1e-12
    assert float(kls.min()) == pytest.approx(float(case.prior.kl(case.theta, case.sigma, lam_star)), rel=1e-9, abs=1e-9)


@SETTINGS
@given(seed=seeds, dim=dims, per_param=per_params)
def test_isotropic_prior_is_invariant_to_permuting_coordinates(seed: int, dim: int, per_param: bool) -> None:
    case = make_case("isotropic", seed, dim, 0, per_param)
    perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed + 1))
    permuted = IsotropicGaussian(case.mean[perm].clone())
    sigma_p = case.sigma[perm] if per_param else case.sigma
    close(permuted.kl(case.theta[perm], sigma_p, case.lam), case.prior.kl(case.theta, case.sigma, case.lam))
    close(permuted.optimal_variance(case.theta[perm], sigma_p), case.prior.optimal_variance(case.theta, case.sigma))
    close(permuted.log_prob(case.theta[perm], case.lam), case.prior.log_prob(case.theta, case.lam))


@SETTINGS
@given(seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_lowrank_prior_is_invariant_to_permuting_coordinates(seed: int, dim: int, rank: int, per_param: bool) -> None:
    case = make_case("lowrank", seed, dim, rank, per_param)
    prior = case.prior
    assert isinstance(prior, LowRankGaussian)
    perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed + 1))
    permuted = LowRankGaussian(case.mean[perm].clone(), prior.diagonal[perm].clone(), prior.factor[perm].clone())
    sigma_p = case.sigma[perm] if per_param else case.sigma
    close(permuted.kl(case.theta[perm], sigma_p, case.lam), prior.kl(case.theta, case.sigma, case.lam))
    close(permuted.optimal_variance(case.theta[perm], sigma_p), prior.optimal_variance(case.theta, case.sigma))
    close(permuted.precision_diagonal(), prior.precision_diagonal()[perm])


@SETTINGS
@given(seed=seeds, dim=dims, rank=st.integers(1, 3), per_param=per_params)
def test_lowrank_prior_is_invariant_to_rotating_the_factor(seed: int, dim: int, rank: int, per_param: bool) -> None:
    """U U^T = (U Q)(U Q)^T for orthogonal Q: the prior, its KL and lam* are unchanged."""
    case = make_case("lowrank", seed, dim, rank, per_param)
    prior = case.prior
    assert isinstance(prior, LowRankGaussian)
    q, _ = torch.linalg.qr(torch.randn(rank, rank, generator=torch.Generator().manual_seed(seed + 2), dtype=F64))
    rotated = LowRankGaussian(prior.mean.clone(), prior.diagonal.clone(), prior.factor @ q)
    close(rotated.kl(case.theta, case.sigma, case.lam), prior.kl(case.theta, case.sigma, case.lam))
    close(rotated.optimal_variance(case.theta, case.sigma), prior.optimal_variance(case.theta, case.sigma))
    close(rotated.log_prob(case.theta, case.lam), prior.log_prob(case.theta, case.lam))
    close(rotated.logdet_covariance(), prior.logdet_covariance())
    close(rotated.precision_diagonal(), prior.precision_diagonal())


@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_kl_and_lambda_are_invariant_to_shifting_theta_and_mu_together(
    kind: str, seed: int, dim: int, rank: int, per_param: bool
) -> None:
    case = make_case(kind, seed, dim, rank, per_param)
    shift = 3.0 * torch.randn(dim, generator=torch.Generator().manual_seed(seed + 3), dtype=F64)
    prior = case.prior
    if isinstance(prior, LowRankGaussian):
        moved: GaussianPrior = LowRankGaussian(prior.mean + shift, prior.diagonal.clone(), prior.factor.clone())
    else:
        moved = IsotropicGaussian(prior.mean + shift)
    close(moved.kl(case.theta + shift, case.sigma, case.lam), prior.kl(case.theta, case.sigma, case.lam), rtol=1e-8)
    close(
        moved.optimal_variance(case.theta + shift, case.sigma),
        prior.optimal_variance(case.theta, case.sigma),
        rtol=1e-8,
    )


@SETTINGS
@given(seed=seeds, dim=dims, rank=ranks, per_param=per_params, log_c=st.floats(-5.0, 5.0))
def test_scaling_sigma_is_absorbed_by_lambda(seed: int, dim: int, rank: int, per_param: bool, log_c: float) -> None:
    """Sigma -> c Sigma (a -> c a, U -> sqrt(c) U) gives lam* -> lam* / c and the same KL at the optimum."""
    case = make_case("lowrank", seed, dim, rank, per_param)
    prior = case.prior
    assert isinstance(prior, LowRankGaussian)
    c = math.exp(log_c)
    scaled = LowRankGaussian(prior.mean.clone(), c * prior.diagonal, math.sqrt(c) * prior.factor)
    kl, lam = prior.kl_at_optimum(case.theta, case.sigma)
    kl_scaled, lam_scaled = scaled.kl_at_optimum(case.theta, case.sigma)
    close(lam_scaled, lam / c, rtol=1e-8)
    close(kl_scaled, kl, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------------------------
# 10. numerical safety: lam* stays positive and finite in float32 and bfloat16
# --------------------------------------------------------------------------------------------
LOW_PRECISION = (torch.float32, torch.bfloat16)


def _prior_in(kind: str, dtype: torch.dtype, dim: int = 64) -> GaussianPrior:
    gen = torch.Generator().manual_seed(0)
    prior, _, _ = make_prior(kind, gen, dim, 2)
    return prior.to(dtype=dtype)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sigma", [0.0, 1e-45, 1e-30, 1e-20, 1e-12, 1e-3])
def test_lambda_positive_and_finite_at_theta_equal_mu_and_tiny_sigma(
    kind: str, dtype: torch.dtype, sigma: float
) -> None:
    """theta = mu, sigma -> 0: the quadratic underflows to 0, lam* is floored at finfo.tiny (not 0, not NaN)."""
    prior = _prior_in(kind, dtype)
    theta = prior.mean.clone()
    sigma_t = torch.tensor(sigma, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    for lam in (prior.optimal_variance(theta, sigma_t), prior.kl_at_optimum(theta, sigma_t)[1]):
        assert lam.dtype == dtype and lam.ndim == 0
        assert bool(torch.isfinite(lam)) and float(lam) >= tiny
    kl, _ = prior.kl_at_optimum(theta, sigma_t)
    if float(sigma_t) > 0:
        assert bool(torch.isfinite(kl)), float(kl)
    else:  # a point-mass q (sigma = 0 in this dtype) is infinitely far from any Gaussian: +inf, never NaN
        assert float(kl) == math.inf


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("deviation", [1e3, 1e10, 1e18, 1e30])
def test_lambda_positive_and_finite_for_huge_deviations(kind: str, dtype: torch.dtype, deviation: float) -> None:
    """When |theta - mu|^2 overflows the dtype, lam* is clamped to finfo.max and the KL is +inf (never NaN)."""
    prior = _prior_in(kind, dtype)
    theta = prior.mean + deviation
    sigma = torch.tensor(1e-3, dtype=dtype)
    lam = prior.optimal_variance(theta, sigma)
    kl, lam_opt = prior.kl_at_optimum(theta, sigma)
    for value in (lam, lam_opt):
        assert bool(torch.isfinite(value)) and float(value) > 0
    assert not bool(torch.isnan(kl))
    if bool(torch.isfinite(prior.mahalanobis(theta))):
        assert bool(torch.isfinite(kl))
        assert float(lam) == pytest.approx(float(prior.mahalanobis(theta)) / prior.dim, rel=0.02)
    else:
        assert float(kl) == math.inf and float(lam) == torch.finfo(dtype).max


@settings(max_examples=examples(60), deadline=None)
@given(
    kind=kinds,
    seed=seeds,
    dtype=st.sampled_from(LOW_PRECISION),
    log_dev=st.floats(-40.0, 40.0),
    log_sigma=st.floats(-40.0, 5.0),
    per_param=per_params,
)
def test_lambda_always_positive_and_finite_in_low_precision(
    kind: str, seed: int, dtype: torch.dtype, log_dev: float, log_sigma: float, per_param: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    prior, mean, _ = make_prior(kind, gen, 16, 2)
    prior = prior.to(dtype=dtype)
    theta = (mean + 10.0**log_dev * torch.randn(16, generator=gen, dtype=F64)).to(dtype)
    sigma = (10.0**log_sigma * torch.exp(_uniform(gen, (16,) if per_param else (), -1.0, 1.0))).to(dtype)
    lam = prior.optimal_variance(theta, sigma)
    kl, lam_opt = prior.kl_at_optimum(theta, sigma)
    for value in (lam, lam_opt):
        assert bool(torch.isfinite(value)) and float(value) > 0.0
    assert not bool(torch.isnan(kl))


@pytest.mark.parametrize("variance", [0.0, -1.0, math.nan, math.inf])
def test_error_non_positive_python_variance(variance: float) -> None:
    _, prior = _small_prior("isotropic")
    theta = prior.mean.clone()
    with pytest.raises(ConfigError, match="prior variance must be a positive finite number"):
        prior.kl(theta, torch.tensor(0.5, dtype=F64), variance)
    with pytest.raises(ConfigError, match="prior variance must be a positive finite number"):
        prior.log_prob(theta, variance)


# --------------------------------------------------------------------------------------------
# 11. properties on hypothesis-drawn values (not seeds): shrinking reaches exact zeros and extremes
# --------------------------------------------------------------------------------------------
_offsets = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
_log_scales = st.floats(-8.0, 3.0)


@settings(max_examples=examples(80), deadline=None)
@given(data=st.data(), lowrank=st.booleans(), dim=st.integers(1, 5), rank=st.integers(0, 2), log_lam=st.floats(-10, 10))
def test_kl_non_negative_and_lambda_star_positive_minimiser_on_drawn_values(
    data: st.DataObject, lowrank: bool, dim: int, rank: int, log_lam: float
) -> None:
    """For any q and prior drawn value by value: KL(lam) >= 0, 0 < lam* < inf, KL(lam*) <= KL(lam)."""
    vec = st.lists(_offsets, min_size=dim, max_size=dim)
    mean = torch.tensor(data.draw(vec), dtype=F64)
    theta = mean + torch.tensor(data.draw(vec), dtype=F64)
    sigma = torch.exp(torch.tensor(data.draw(st.lists(_log_scales, min_size=dim, max_size=dim)), dtype=F64))
    prior: GaussianPrior = IsotropicGaussian(mean)
    if lowrank:
        diagonal = torch.exp(torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=dim, max_size=dim)), dtype=F64))
        entries = data.draw(st.lists(st.floats(-3, 3), min_size=dim * rank, max_size=dim * rank))
        prior = LowRankGaussian(mean, diagonal, torch.tensor(entries, dtype=F64).reshape(dim, rank))
    lam = math.exp(log_lam)
    lam_star = prior.optimal_variance(theta, sigma)
    assert bool(torch.isfinite(lam_star)) and float(lam_star) > 0.0
    kl, kl_star = prior.kl(theta, sigma, lam), prior.kl(theta, sigma, lam_star)
    # the KL is a difference of terms that can be ~1e12 here: compare against their size
    quad = prior.trace_term(sigma) + prior.mahalanobis(theta)
    size = 1.0 + float(quad / lam) + dim * (1 + abs(log_lam)) + abs(float(prior.logdet_covariance()))
    size += float(torch.log(sigma**2).abs().sum())
    tol = 1e-9 * size
    assert float(kl) >= -tol and float(kl_star) >= -tol
    assert float(kl_star) <= float(kl) + tol


@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_kl_decreases_then_increases_in_lambda(kind: str, seed: int, dim: int, rank: int, per_param: bool) -> None:
    """KL(lam) is unimodal: strictly decreasing below lam*, strictly increasing above (a grid in log lam)."""
    case = make_case(kind, seed, dim, rank, per_param)
    lam_star = float(case.prior.optimal_variance(case.theta, case.sigma))
    below = [lam_star * math.exp(-t) for t in (4.0, 2.0, 1.0, 0.5, 0.1, 0.02)]
    above = [lam_star * math.exp(t) for t in (0.02, 0.1, 0.5, 1.0, 2.0, 4.0)]
    kl_below = [float(case.prior.kl(case.theta, case.sigma, v)) for v in below]
    kl_above = [float(case.prior.kl(case.theta, case.sigma, v)) for v in above]
    assert all(a > b for a, b in itertools.pairwise(kl_below))
    assert all(a < b for a, b in itertools.pairwise(kl_above))


@SETTINGS
@given(kind=kinds, seed=seeds, dim=dims, rank=ranks, per_param=per_params)
def test_duplicating_every_coordinate_keeps_lambda_star_and_doubles_the_kl(
    kind: str, seed: int, dim: int, rank: int, per_param: bool
) -> None:
    """lam* is a per-weight average and the KL at lam* is additive over independent copies of the problem."""
    case = make_case(kind, seed, dim, rank, per_param)
    prior = case.prior
    mean2 = torch.cat([prior.mean, prior.mean])
    if isinstance(prior, LowRankGaussian):
        twice: GaussianPrior = LowRankGaussian(
            mean2, torch.cat([prior.diagonal, prior.diagonal]), torch.block_diag(prior.factor, prior.factor)
        )
    else:
        twice = IsotropicGaussian(mean2)
    sigma2 = torch.cat([case.sigma, case.sigma]) if per_param else case.sigma
    kl, lam = prior.kl_at_optimum(case.theta, case.sigma)
    kl2, lam2 = twice.kl_at_optimum(torch.cat([case.theta, case.theta]), sigma2)
    close(lam2, lam, rtol=1e-10)
    close(kl2, 2 * kl, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(seed=seeds, dim=dims, signs=st.lists(st.sampled_from((-1.0, 1.0)), min_size=3, max_size=3))
def test_lowrank_prior_is_invariant_to_flipping_factor_column_signs(seed: int, dim: int, signs: list[float]) -> None:
    """U -> U diag(+-1) (a reflection, V -> V Q with Q diagonal) leaves U U^T, the KL and lam* unchanged."""
    case = make_case("lowrank", seed, dim, 3, per_param=True)
    prior = case.prior
    assert isinstance(prior, LowRankGaussian)
    flipped = LowRankGaussian(prior.mean.clone(), prior.diagonal.clone(), prior.factor * torch.tensor(signs, dtype=F64))
    close(flipped.kl(case.theta, case.sigma, case.lam), prior.kl(case.theta, case.sigma, case.lam))
    close(flipped.optimal_variance(case.theta, case.sigma), prior.optimal_variance(case.theta, case.sigma))


# --- per-layer prior variances (one lam per block) -------------------------------------------------


def _dense_blockwise_kl(theta: Tensor, mean: Tensor, sigma: Tensor, sizes: list[int], lams: Tensor) -> Tensor:
    """``KL(N(theta, diag sigma^2) || N(mean, diag(lam_b per weight)))`` by torch.distributions (dense)."""
    var = torch.repeat_interleave(lams, torch.tensor(sizes))
    q = MultivariateNormal(theta, covariance_matrix=torch.diag(sigma**2))
    p = MultivariateNormal(mean, covariance_matrix=torch.diag(var))
    return kl_divergence(q, p)


@SETTINGS
@given(seed=seeds, sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=4), per=per_params)
def test_blockwise_kl_and_variances_match_brute_force(seed: int, sizes: list[int], per: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    dim = sum(sizes)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    theta = mean + torch.randn(dim, generator=gen, dtype=F64) * _uniform(gen, (1,), 0.01, 2.0)
    sigma = _uniform(gen, (dim,), 0.05, 1.0) if per else _uniform(gen, (), 0.05, 1.0)
    kl, lams = IsotropicGaussian(mean).kl_at_optimum_blocks(theta, sigma, sizes)
    full_sigma = sigma.expand(dim) if sigma.ndim == 0 else sigma
    assert lams.shape == (len(sizes),)
    assert float(kl) == pytest.approx(
        float(_dense_blockwise_kl(theta, mean, full_sigma, sizes, lams)), rel=1e-9, abs=1e-9
    )
    # each lam_b is the 1-d minimiser of the dense KL with the other blocks held fixed
    for b in range(len(sizes)):

        def kl_at(log_lam: float, b: int = b) -> float:
            trial = lams.clone()
            trial[b] = math.exp(log_lam)
            return float(_dense_blockwise_kl(theta, mean, full_sigma, sizes, trial))

        found = minimize_scalar(kl_at, bracket=(math.log(float(lams[b])) - 1, math.log(float(lams[b])) + 1), tol=1e-12)
        assert math.exp(found.x) == pytest.approx(float(lams[b]), rel=1e-4)


@SETTINGS
@given(seed=seeds, dim=dims, per=per_params)
def test_one_block_equals_the_shared_closed_form(seed: int, dim: int, per: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    theta = torch.randn(dim, generator=gen, dtype=F64)
    sigma = _uniform(gen, (dim,), 0.05, 1.0) if per else _uniform(gen, (), 0.05, 1.0)
    prior = IsotropicGaussian(mean)
    kl_blocks, lams = prior.kl_at_optimum_blocks(theta, sigma, [dim])
    kl, lam = prior.kl_at_optimum(theta, sigma)
    assert float(kl_blocks) == pytest.approx(float(kl), rel=1e-12, abs=1e-12)
    assert float(lams[0]) == pytest.approx(float(lam), rel=1e-12)


def test_blockwise_kl_gradient_matches_total_derivative() -> None:
    """lam_b* is detached: by the envelope theorem the gradient still equals that of the dense KL at lam*."""
    gen = torch.Generator().manual_seed(3)
    sizes = [2, 3, 1]
    mean = torch.randn(6, generator=gen, dtype=F64)
    theta = torch.randn(6, generator=gen, dtype=F64, requires_grad=True)
    sigma = _uniform(gen, (6,), 0.1, 0.5).requires_grad_(True)
    kl, _ = IsotropicGaussian(mean).kl_at_optimum_blocks(theta, sigma, sizes)
    got = torch.autograd.grad(kl, (theta, sigma))

    def profile(t: Tensor, s: Tensor) -> Tensor:  # lam_b* recomputed differentiably
        parts = torch.split((t - mean) ** 2 + s**2, sizes)
        lams = torch.stack([p.mean() for p in parts])
        return _dense_blockwise_kl(t, mean, s, sizes, lams)

    want = torch.autograd.grad(profile(theta, sigma), (theta, sigma))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
