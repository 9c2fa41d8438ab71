"""Training objectives: MAP with a fixed weight decay, and the data-emphasized ELBo.

Both are per-example losses (nats per training example) that return the same
:class:`LossRecord`, so the one training loop runs either:

* MAP:     ``nll_mean + weight_decay / 2 * [(theta - mu)^T Sigma^-1 (theta - mu) + |phi|^2]``
* DE-ELBo: ``nll_mean(theta~) + KL(q || p(. | lam*, tau*)) / (kappa * N)``, ``theta~ ~ q``,
  with ``kappa = D / N`` by default (``kappa = 1`` is the plain ELBo) and ``lam*``, ``tau*``
  set to their closed-form optimum at every step.

``theta`` are the body (backbone) weights under the body prior, ``phi`` the head weights
under their own zero-mean isotropic prior. Either objective can add a classic
:class:`~optuna_deelbo.penalties.Penalty` (L1, L2, smoothed L1/2) on the (mean) weights, and
``y`` may be integer labels ``(B,)`` or soft targets ``(B, K)`` (mixup, cutmix, label smoothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import nonnegative_finite, positive_finite, positive_int
from optuna_deelbo.penalties import Penalty
from optuna_deelbo.posterior import ParameterGroups, SigmaMode, WeightPosterior
from optuna_deelbo.priors import GaussianPrior, IsotropicGaussian

__all__ = ["DEELBoObjective", "LossRecord", "MAPObjective", "Objective"]


@dataclass
class LossRecord:
    """What one step of either objective produced (0-d tensors, not synchronised to the host).

    Attributes:
        loss: the value to minimise (nats per example).
        nll: mean negative log-likelihood of the batch (nats per example).
        penalty: MAP: ``weight_decay/2 * Mahalanobis``; DE-ELBo: ``KL(q || p)`` in nats (total).
        lam: body prior variance (DE-ELBo: learned ``lam*``; MAP: ``None``).
        tau: head prior variance (DE-ELBo with a head; else ``None``).
    """

    loss: Tensor
    nll: Tensor
    penalty: Tensor
    lam: Tensor | None = None
    tau: Tensor | None = None


def _autocast(x: Tensor, enabled: bool) -> contextlib.AbstractContextManager[object]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)


def _check_prior(prior: GaussianPrior, dim: int, what: str) -> None:
    if prior.dim != dim:
        raise ConfigError(f"{what} prior covers {prior.dim} weights but the model's {what} has {dim}")


class Objective(nn.Module):
    """Common base: a model, its body/head split and the two priors."""

    name: str = "objective"

    def __init__(
        self,
        model: nn.Module,
        groups: ParameterGroups,
        body_prior: GaussianPrior,
        head_prior: GaussianPrior | None = None,
        penalty: Penalty | None = None,
    ) -> None:
        super().__init__()
        self.penalty = penalty
        self.model = model
        self.groups = groups
        ref = next(model.parameters())
        _check_prior(body_prior, groups.numel(model, "body"), "body")
        self.body_prior = body_prior.to(device=ref.device, dtype=ref.dtype)
        self.head_prior: GaussianPrior | None = None
        if groups.head:
            dim = groups.numel(model, "head")
            head_prior = head_prior or IsotropicGaussian.zero(dim, dtype=ref.dtype, device=ref.device)
            _check_prior(head_prior, dim, "head")
            self.head_prior = head_prior.to(device=ref.device, dtype=ref.dtype)

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters besides the model's own (e.g. the posterior's sigma)."""
        return iter(())

    def extra_penalty(self, body: Tensor, head: Tensor | None) -> Tensor:
        """The optional :class:`Penalty` (L1, L2, L1/2) on the (mean) weights, per example (nats).

        The body is penalised towards its prior mean (the pretrained weights for L2-SP/PTYL),
        the head towards 0; zero when no penalty is set.
        """
        if self.penalty is None:
            return body.new_zeros(())
        value = self.penalty(body, self.body_prior.mean.to(body.dtype))
        return value + self.penalty(head) if head is not None else value

    def logits(self, x: Tensor) -> Tensor:
        """Predictions with the mean weights, shape ``(B, C)``."""
        return self.model(x)

    def forward(self, x: Tensor, y: Tensor, amp: bool = False) -> LossRecord:  # pragma: no cover - abstract
        raise NotImplementedError


class MAPObjective(Objective):
    """``nll_mean + weight_decay/2 * [Mahalanobis(theta) + |phi|^2]`` (L2 / L2-SP / PTYL-MAP).

    Args:
        weight_decay: ``alpha >= 0``, per-example penalty coefficient (as in ``torch.optim.SGD``).
    """

    name = "map"

    def __init__(
        self,
        model: nn.Module,
        groups: ParameterGroups,
        body_prior: GaussianPrior,
        weight_decay: float,
        head_prior: GaussianPrior | None = None,
        penalty: Penalty | None = None,
    ) -> None:
        super().__init__(model, groups, body_prior, head_prior, penalty)
        self.weight_decay = nonnegative_finite(weight_decay, "weight_decay")

    def forward(self, x: Tensor, y: Tensor, amp: bool = False) -> LossRecord:
        with _autocast(x, amp):
            logits = self.model(x)
        nll = nn.functional.cross_entropy(logits.float(), y)
        params = dict(self.model.named_parameters())
        penalty = nll.new_zeros(())
        if self.weight_decay > 0:
            maha = self.body_prior.mahalanobis(self.groups.flat(params, "body"))
            if self.head_prior is not None:
                maha = maha + self.head_prior.mahalanobis(self.groups.flat(params, "head"))
            penalty = 0.5 * self.weight_decay * maha
        if self.penalty is not None:
            head = self.groups.flat(params, "head") if self.groups.head else None
            penalty = penalty + self.extra_penalty(self.groups.flat(params, "body"), head)
        return LossRecord(loss=nll + penalty, nll=nll, penalty=penalty)


class DEELBoObjective(Objective):
    """The data-emphasized ELBo with closed-form ``lam*`` (body) and ``tau*`` (head) every step.

    Args:
        n_train: ``N``, the number of training examples (> 0).
        kappa: likelihood emphasis; ``None`` means ``D / N`` with ``D`` all trainable weights.
        sigma_mode: posterior std parametrisation, see :class:`WeightPosterior`.
        init_sigma: initial posterior std (weight units).
        share_head_sigma: scalar mode: one sigma for body and head (see :class:`WeightPosterior`).
        prior_structure: ``"shared"`` (one body lambda) or ``"layer"`` (one lambda per body
            parameter tensor, each in closed form; isotropic body priors only). The logged
            ``lam`` is then their size-weighted mean, :meth:`layer_variances` gives each.
    """

    name = "deelbo"

    def __init__(
        self,
        model: nn.Module,
        groups: ParameterGroups,
        body_prior: GaussianPrior,
        n_train: int,
        head_prior: GaussianPrior | None = None,
        kappa: float | None = None,
        sigma_mode: SigmaMode = "scalar",
        init_sigma: float = 1e-3,
        penalty: Penalty | None = None,
        share_head_sigma: bool = False,
        prior_structure: str = "shared",
    ) -> None:
        super().__init__(model, groups, body_prior, head_prior, penalty)
        if prior_structure not in ("shared", "layer"):
            raise ConfigError(f"unknown prior_structure {prior_structure!r}; choose 'shared' or 'layer'")
        if prior_structure == "layer" and not isinstance(self.body_prior, IsotropicGaussian):
            raise ConfigError(
                "prior_structure='layer' has a closed form only for isotropic body priors (l2-zero, l2-sp), "
                f"not {type(self.body_prior).__name__}"
            )
        params = dict(model.named_parameters())
        self.prior_structure = prior_structure
        self.block_sizes = tuple(params[n].numel() for n in groups.body)
        self.n_train = positive_int(n_train, "n_train (N)")
        self.num_weights = groups.numel(model, "body") + (groups.numel(model, "head") if groups.head else 0)
        if kappa is None:
            kappa = self.num_weights / self.n_train
        self.kappa = positive_finite(kappa, "kappa")
        self.posterior = WeightPosterior(
            model, groups, sigma_mode=sigma_mode, init_sigma=init_sigma, share_head_sigma=share_head_sigma
        )

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        return self.posterior.sigma_parameters()

    def kl_terms(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(KL, lam*, tau*)``: the total KL in nats with both variances at their (detached) optimum."""
        post = self.posterior
        body_mean, body_sigma = post.flat_mean("body"), post.flat_sigma("body")
        if self.prior_structure == "layer":
            assert isinstance(self.body_prior, IsotropicGaussian)
            kl, lams = self.body_prior.kl_at_optimum_blocks(body_mean, body_sigma, self.block_sizes)
            sizes = torch.tensor(self.block_sizes, dtype=lams.dtype, device=lams.device)
            lam = (lams * sizes).sum() / sizes.sum()
        else:
            kl, lam = self.body_prior.kl_at_optimum(body_mean, body_sigma)
        tau = None
        if self.head_prior is not None:
            kl_head, tau = self.head_prior.kl_at_optimum(post.flat_mean("head"), post.flat_sigma("head"))
            kl = kl + kl_head
        return kl, lam, tau

    @torch.no_grad()
    def layer_variances(self) -> dict[str, float]:
        """``lam*`` per body parameter tensor (weight units squared), by parameter name.

        With ``prior_structure="shared"`` every tensor reports the one shared ``lam*``.
        """
        post = self.posterior
        mean, sigma = post.flat_mean("body"), post.flat_sigma("body")
        if self.prior_structure == "layer":
            assert isinstance(self.body_prior, IsotropicGaussian)
            _, lams = self.body_prior.kl_at_optimum_blocks(mean, sigma, self.block_sizes)
            return {name: float(v) for name, v in zip(self.groups.body, lams, strict=True)}
        lam = float(self.body_prior.optimal_variance(mean, sigma))
        return dict.fromkeys(self.groups.body, lam)

    def forward(self, x: Tensor, y: Tensor, amp: bool = False) -> LossRecord:
        with _autocast(x, amp):
            logits = self.posterior.forward_sample(x)
        nll = nn.functional.cross_entropy(logits.float(), y)
        kl, lam, tau = self.kl_terms()
        loss = nll + kl / (self.kappa * self.n_train)
        if self.penalty is not None:
            post = self.posterior
            head = post.flat_mean("head") if self.groups.head else None
            loss = loss + self.extra_penalty(post.flat_mean("body"), head)
        return LossRecord(loss=loss, nll=nll, penalty=kl, lam=lam, tau=tau)

    def equivalent_weight_decay(self, variance: float) -> float:
        """The ``weight_decay`` a MAP run would need to match a learned prior variance.

        The DE-ELBo's per-example loss holds ``|theta - mu|^2 / (2 lam kappa N)``, the MAP
        loss ``weight_decay/2 * |theta - mu|^2``; so ``weight_decay = 1 / (lam * kappa * N)``.
        """
        return 1.0 / (variance * self.kappa * self.n_train)
