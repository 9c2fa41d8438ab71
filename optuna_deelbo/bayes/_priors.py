"""Gaussian priors over a flat weight vector, and their closed forms against a diagonal q.

Pure tensor maths: every function takes flat tensors of length ``D`` (the number of weights
the prior covers), never an ``nn.Module``. The prior is ``p(theta | lam) = N(mu, lam * Sigma)``
with a scalar variance ``lam > 0`` that the DE-ELBo learns; ``Sigma`` is ``I`` for
:class:`IsotropicGaussian` (L2-zero, L2-SP) and ``diag(a) + U U^T`` for
:class:`LowRankGaussian` (PTYL). The variational posterior is
``q(theta) = N(m, diag(sigma^2))`` with ``sigma`` a scalar (shape ``()``) or one standard
deviation per weight (shape ``(D,)``).

Closed forms (``d = mu - m``)::

    KL(q || p) = 0.5 * [ (Tr(Sigma^-1 S) + d^T Sigma^-1 d) / lam - D + D log lam
                         + log det Sigma - sum_i log sigma_i^2 ],   S = diag(sigma^2)
    lam*       = (Tr(Sigma^-1 S) + d^T Sigma^-1 d) / D                 (argmin_lam KL)

Numerical safety: ``lam*`` is clamped to ``[finfo.tiny, finfo.max]`` of its dtype (1.2e-38 to
3.4e38 for float32 and bfloat16), so it stays positive and finite when ``theta == mu`` and
``sigma -> 0`` (the quadratic underflows to 0) and when the deviations are so large that the
quadratic overflows; in the latter case the KL is ``+inf`` and training reports divergence.
A NaN input stays NaN (training reports it as non-finite).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_finite

__all__ = [
    "PRIOR_NAMES",
    "GaussianPrior",
    "IsotropicGaussian",
    "LowRankGaussian",
    "body_prior_for",
    "checked_prior",
    "head_prior_for",
]

#: Names accepted wherever a prior family is chosen by name (CLI, task specs).
PRIOR_NAMES: tuple[str, ...] = ("l2-zero", "l2-sp", "ptyl")

_LOG_2PI = math.log(2.0 * math.pi)


def _as_vector(x: Tensor, dim: int, what: str) -> Tensor:
    if x.ndim != 1 or x.shape[0] != dim:
        raise ConfigError(f"{what} must be a flat vector of length {dim}, got shape {tuple(x.shape)}")
    return x


_CHUNK_ROWS = 1 << 20


def _row_chunks(dim: int) -> list[slice]:
    return [slice(start, min(start + _CHUNK_ROWS, dim)) for start in range(0, dim, _CHUNK_ROWS)]


def _clamp_variance(lam: Tensor) -> Tensor:
    """``lam`` within ``[finfo.tiny, finfo.max]`` of its dtype: positive and finite (NaN stays NaN)."""
    info = torch.finfo(lam.dtype)
    return lam.clamp(min=info.tiny, max=info.max)


def _variance_tensor(variance: Tensor | float, like: Tensor) -> Tensor:
    """A prior variance as a 0-d tensor like ``like``; a Python number must be finite and > 0."""
    if not isinstance(variance, Tensor):
        variance = positive_finite(variance, "prior variance")
    return torch.as_tensor(variance, dtype=like.dtype, device=like.device)


class GaussianPrior(ABC):
    """``N(mu, lam * Sigma)`` over ``D`` weights; subclasses supply ``Sigma``'s three primitives."""

    def __init__(self, mean: Tensor) -> None:
        if mean.ndim != 1 or mean.shape[0] == 0:
            raise ConfigError(f"prior mean must be a non-empty flat vector, got shape {tuple(mean.shape)}")
        if not torch.is_floating_point(mean):
            raise ConfigError(f"prior mean must be a floating-point tensor, got {mean.dtype}")
        self.mean = mean

    @property
    def dim(self) -> int:
        """``D``, the number of weights the prior covers."""
        return int(self.mean.shape[0])

    # --- primitives of Sigma ------------------------------------------------------------
    @abstractmethod
    def precision_quadratic(self, x: Tensor) -> Tensor:
        """``x^T Sigma^-1 x`` for ``x`` of shape ``(D,)``; returns a 0-d tensor."""

    @abstractmethod
    def precision_diagonal(self) -> Tensor:
        """``diag(Sigma^-1)``, shape ``(D,)``."""

    @abstractmethod
    def logdet_covariance(self) -> Tensor:
        """``log det Sigma`` (0-d); ``Sigma`` is the covariance at ``lam = 1``."""

    @abstractmethod
    def precision_trace(self) -> Tensor:
        """``Tr(Sigma^-1)`` (0-d)."""

    @abstractmethod
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GaussianPrior:
        """A copy of the prior on ``device`` with floating tensors cast to ``dtype``."""

    # --- closed forms ---------------------------------------------------------------------
    def mahalanobis(self, theta: Tensor) -> Tensor:
        """``(theta - mu)^T Sigma^-1 (theta - mu)`` for ``theta`` of shape ``(D,)``."""
        theta = _as_vector(theta, self.dim, "theta")
        return self.precision_quadratic(theta - self.mean.to(theta.dtype))

    def trace_term(self, sigma: Tensor) -> Tensor:
        """``Tr(Sigma^-1 diag(sigma^2))`` for scalar or per-weight ``sigma``."""
        if sigma.ndim == 0 or sigma.numel() == 1:
            return sigma.reshape(()) ** 2 * self.precision_trace().to(sigma.dtype)
        sigma = _as_vector(sigma, self.dim, "sigma")
        return (sigma**2 * self.precision_diagonal().to(sigma.dtype)).sum()

    def _sum_log_var(self, sigma: Tensor) -> Tensor:
        if sigma.ndim == 0 or sigma.numel() == 1:
            return self.dim * 2.0 * torch.log(sigma.reshape(()))
        return 2.0 * torch.log(_as_vector(sigma, self.dim, "sigma")).sum()

    def optimal_variance(self, theta: Tensor, sigma: Tensor) -> Tensor:
        """Closed-form ``lam* = (Tr(Sigma^-1 S) + d^T Sigma^-1 d) / D`` minimising :meth:`kl`.

        Args:
            theta: posterior mean, shape ``(D,)``.
            sigma: posterior std, shape ``()`` or ``(D,)``.

        Returns:
            0-d tensor, the variance scale ``lam*`` (units of weight^2), clamped to the
            dtype's ``[finfo.tiny, finfo.max]`` (see the module docstring).
        """
        return _clamp_variance((self.trace_term(sigma) + self.mahalanobis(theta)) / self.dim)

    def kl(self, theta: Tensor, sigma: Tensor, variance: Tensor | float) -> Tensor:
        """``KL(N(theta, diag sigma^2) || N(mu, variance * Sigma))`` in nats (0-d tensor).

        A Python-number ``variance`` must be finite and > 0 (else :class:`ConfigError`).
        """
        lam = _variance_tensor(variance, theta)
        dim = self.dim
        quad = self.trace_term(sigma) + self.mahalanobis(theta)
        return 0.5 * (
            quad / lam
            - dim
            + dim * torch.log(lam)
            + self.logdet_covariance().to(theta.dtype)
            - self._sum_log_var(sigma)
        )

    def kl_at_optimum(self, theta: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(KL(q || p(. | lam*)), lam*)`` sharing one evaluation of the quadratic terms.

        ``lam*`` is returned detached. Because ``dKL/dlam = 0`` at ``lam*``, the KL's gradient
        with respect to ``theta`` and ``sigma`` equals the total derivative through ``lam*``
        (envelope theorem), so treating it as a constant loses nothing.
        """
        dim = self.dim
        quad = self.trace_term(sigma) + self.mahalanobis(theta)
        lam = _clamp_variance(quad / dim).detach()
        kl = 0.5 * (
            quad / lam
            - dim
            + dim * torch.log(lam)
            + self.logdet_covariance().to(theta.dtype)
            - self._sum_log_var(sigma)
        )
        return kl, lam

    def log_prob(self, theta: Tensor, variance: Tensor | float) -> Tensor:
        """``log N(theta; mu, variance * Sigma)`` in nats (0-d tensor), the MAP penalty's density."""
        lam = _variance_tensor(variance, theta)
        dim = self.dim
        return -0.5 * (
            self.mahalanobis(theta) / lam
            + dim * torch.log(lam)
            + self.logdet_covariance().to(theta.dtype)
            + dim * _LOG_2PI
        )


class IsotropicGaussian(GaussianPrior):
    """``N(mu, lam * I)``: L2-zero (``mean`` zeros) or L2-SP (``mean`` = pretrained weights).

    Args:
        mean: prior mean, shape ``(D,)``.
    """

    @classmethod
    def zero(
        cls, dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> IsotropicGaussian:
        """The L2-zero prior ``N(0, lam I)`` over ``dim`` weights."""
        if dim <= 0:
            raise ConfigError(f"prior dimension must be positive, got {dim}")
        return cls(torch.zeros(dim, dtype=dtype, device=device))

    def precision_quadratic(self, x: Tensor) -> Tensor:
        return torch.dot(x, x)

    def precision_diagonal(self) -> Tensor:
        return torch.ones_like(self.mean)

    def logdet_covariance(self) -> Tensor:
        return self.mean.new_zeros(())

    def precision_trace(self) -> Tensor:
        return self.mean.new_tensor(float(self.dim))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> IsotropicGaussian:
        return IsotropicGaussian(self.mean.to(device=device, dtype=dtype))

    def kl_at_optimum_blocks(self, theta: Tensor, sigma: Tensor, sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Per-block prior variances: ``p = prod_b N(mu_b, lam_b I)`` over consecutive blocks of ``sizes``.

        Each ``lam_b* = (sum_{j in b} sigma_j^2 + |theta_b - mu_b|^2) / D_b`` minimises its own
        term, and the KL at the optimum is ``0.5 * sum_b [D_b log lam_b* - sum_{j in b} log sigma_j^2]``.

        Args:
            theta: posterior mean ``(D,)``; sigma: ``()`` or ``(D,)``.
            sizes: block lengths (e.g. one per parameter tensor), summing to ``D``.

        Returns:
            ``(KL in nats, lam* of shape (len(sizes),), detached)``.
        """
        theta = _as_vector(theta, self.dim, "theta")
        if not sizes or any(int(s) <= 0 for s in sizes) or sum(int(s) for s in sizes) != self.dim:
            raise ConfigError(f"block sizes must be positive and sum to the prior's {self.dim} weights, got {sizes}")
        diff2 = (theta - self.mean.to(theta.dtype)) ** 2
        var = (
            sigma.reshape(()).expand_as(theta) ** 2 if sigma.numel() == 1 else _as_vector(sigma, self.dim, "sigma") ** 2
        )
        counts = torch.tensor([int(s) for s in sizes], device=theta.device)
        index = torch.repeat_interleave(torch.arange(len(sizes), device=theta.device), counts)
        quad = torch.zeros(len(sizes), dtype=theta.dtype, device=theta.device).index_add_(0, index, diff2 + var)
        dims = counts.to(theta.dtype)
        lam = _clamp_variance(quad / dims).detach()
        kl = 0.5 * ((quad / lam - dims + dims * torch.log(lam)).sum() - torch.log(var).sum())
        return kl, lam


class LowRankGaussian(GaussianPrior):
    """``N(mu, lam * (diag(a) + U U^T))``: the PTYL prior from SWAG moments.

    Everything goes through Woodbury and the matrix determinant lemma, with
    ``C = I_K + U^T A^-1 U`` (``K x K``) and ``V = A^-1 U L^-T`` where ``C = L L^T``::

        Sigma^-1      = A^-1 - V V^T
        log det Sigma = sum log a + log det C

    so memory is ``O(D K)`` and each :meth:`mahalanobis` costs ``O(D K)``; no ``D x D`` matrix.

    Args:
        mean: prior mean ``mu``, shape ``(D,)``.
        diagonal: ``a > 0``, shape ``(D,)``.
        factor: ``U``, shape ``(D, K)`` (``K`` may be 0).
    """

    def __init__(self, mean: Tensor, diagonal: Tensor, factor: Tensor) -> None:
        super().__init__(mean)
        dim = self.dim
        diagonal = _as_vector(diagonal, dim, "prior diagonal")
        if factor.ndim != 2 or factor.shape[0] != dim:
            raise ConfigError(f"prior low-rank factor must have shape ({dim}, K), got {tuple(factor.shape)}")
        if not bool(torch.all(diagonal > 0)) or not bool(torch.all(torch.isfinite(diagonal))):
            raise ConfigError("prior diagonal must be finite and strictly positive")
        if not bool(torch.all(torch.isfinite(factor))):
            raise ConfigError("prior low-rank factor must be finite")
        self.diagonal = diagonal.to(mean)
        self.factor = factor.to(mean)
        # Precompute in float64 so that float32 priors keep the cancellation in
        # diag(Sigma^-1) = 1/a - rowsum(V^2) accurate, but only ever hold a chunk of rows in
        # float64: a (D, K) float64 copy of a 28M-weight backbone would be gigabytes.
        rank = factor.shape[1]
        inv_a = 1.0 / self.diagonal
        capacitance = torch.eye(rank, dtype=torch.float64, device=mean.device)
        for rows in _row_chunks(dim):
            u = self.factor[rows].double()
            capacitance += u.T @ (u * inv_a[rows, None].double())
        chol = torch.linalg.cholesky(capacitance)
        inv_chol_t = torch.linalg.solve_triangular(
            chol, torch.eye(rank, dtype=torch.float64, device=mean.device), upper=False
        ).T  # L^-T, (K, K)
        self._v = torch.empty_like(self.factor)  # V = A^-1 U L^-T, (D, K)
        self._precision_diagonal = torch.empty_like(self.diagonal)
        for rows in _row_chunks(dim):
            inv_a64 = 1.0 / self.diagonal[rows].double()
            v = (self.factor[rows].double() * inv_a64[:, None]) @ inv_chol_t
            self._v[rows] = v.to(mean.dtype)
            self._precision_diagonal[rows] = (inv_a64 - (v**2).sum(dim=1)).to(mean.dtype)
        self._inv_a = inv_a
        logdet = torch.log(self.diagonal.double()).sum() + 2.0 * torch.log(torch.diagonal(chol)).sum()
        self._logdet = logdet.to(mean.dtype)
        self._precision_trace = self._precision_diagonal.double().sum().to(mean.dtype)

    @property
    def rank(self) -> int:
        """``K``, the number of low-rank columns."""
        return int(self.factor.shape[1])

    def precision_quadratic(self, x: Tensor) -> Tensor:
        inv_a = self._inv_a.to(x.dtype)
        vx = self._v.to(x.dtype).T @ x
        diag_part = torch.dot(x, x * inv_a)
        # x^T A^-1 x >= x^T V V^T x >= 0; if the first overflows, the difference is inf - inf:
        # report the (overflowed) quadratic as +inf, not NaN (a NaN x still gives NaN).
        return torch.where(torch.isinf(diag_part), diag_part, diag_part - torch.dot(vx, vx))

    def precision_diagonal(self) -> Tensor:
        return self._precision_diagonal

    def logdet_covariance(self) -> Tensor:
        return self._logdet

    def precision_trace(self) -> Tensor:
        return self._precision_trace

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LowRankGaussian:
        return LowRankGaussian(
            self.mean.to(device=device, dtype=dtype),
            self.diagonal.to(device=device, dtype=dtype),
            self.factor.to(device=device, dtype=dtype),
        )


def body_prior_for(
    family: str | GaussianPrior,
    body: Tensor,
    *,
    mean: Tensor | None = None,
    covariance: tuple[Tensor, Tensor] | None = None,
) -> GaussianPrior:
    """The body prior for the flat body weights ``body`` ``(D,)``, on their device and dtype.

    Args:
        family: ``"l2-sp"`` (mean = ``body``, the pretrained weights), ``"l2-zero"`` (mean 0),
            ``"ptyl"`` (low rank + diagonal: needs ``covariance``), or a ready prior (dimension checked).
        mean: overrides the family's mean ``(D,)``.
        covariance: ``(diagonal (D,), factor (D, K))`` of ``Sigma`` for ``"ptyl"``.

    Raises:
        ConfigError: an unknown family, a dimension that does not match ``body``, PTYL without covariance.
    """
    if isinstance(family, GaussianPrior):
        return checked_prior(family, body, "body")
    if family not in PRIOR_NAMES:
        raise ConfigError(f"unknown prior {family!r}; choose 'l2-sp', 'l2-zero' or pass a GaussianPrior")
    if mean is not None:
        center = mean.to(device=body.device, dtype=body.dtype)
    elif family == "l2-zero":
        center = torch.zeros_like(body)
    else:
        center = body.detach().clone()
    if family == "ptyl":
        if covariance is None:
            raise ConfigError(
                "prior='ptyl' needs SWAG moments of the pretraining run: pass "
                "od.LowRankGaussian(mean, diagonal, factor) built from od.bayes.SWAGMoments"
            )
        diagonal, factor = covariance
        return LowRankGaussian(center, diagonal.to(center), factor.to(center))
    return IsotropicGaussian(center)


def checked_prior(prior: GaussianPrior, like: Tensor, what: str) -> GaussianPrior:
    """``prior`` on ``like``'s device and dtype, checked to cover ``like.numel()`` weights (``what``: body/head)."""
    if prior.dim != like.numel():
        raise ConfigError(f"{what} prior covers {prior.dim} weights but the model's {what} has {like.numel()}")
    return prior.to(device=like.device, dtype=like.dtype)


def head_prior_for(prior: GaussianPrior | None, head: Tensor) -> GaussianPrior:
    """The head prior for the flat head weights ``head`` ``(H,)``: ``prior`` (checked) or ``N(0, tau I)``."""
    return checked_prior(prior, head, "head") if prior is not None else IsotropicGaussian(torch.zeros_like(head))
