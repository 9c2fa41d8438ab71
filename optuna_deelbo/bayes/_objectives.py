"""Training objectives: MAP with a fixed weight decay, and the data-emphasized ELBo.

Both are per-example losses (nats per training example) that return the same
:class:`LossRecord`, so the one training loop runs either:

* MAP:     ``nll_mean + weight_decay / 2 * [(theta - mu)^T Sigma^-1 (theta - mu) + |phi|^2]``
* DE-ELBo: ``nll_mean(theta~) + KL(q || p(. | lam*, tau*)) / (kappa * N)``, ``theta~ ~ q``,
  with ``kappa = D / N`` by default (``kappa = 1`` is the plain ELBo) and ``lam*``, ``tau*``
  set to their closed-form optimum at every step.

``theta`` are the body (backbone) weights under the body prior, ``phi`` the head weights
under their own zero-mean isotropic prior. Either objective can add a classic
:class:`~optuna_deelbo.regularizers.Penalty` (L1, L2, smoothed L1/2) on the (mean) weights, and
``y`` may be integer labels ``(B,)`` or soft targets ``(B, K)`` (mixup, cutmix, label smoothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from optuna_deelbo._validation import nonnegative_finite
from optuna_deelbo.bayes._deelbo import DEELBo
from optuna_deelbo.bayes._posterior import ParameterGroups, WeightPosterior
from optuna_deelbo.bayes._priors import GaussianPrior, checked_prior, head_prior_for
from optuna_deelbo.regularizers._penalties import Penalty

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


class Objective(nn.Module):
    """What the training loop reads of any objective: the model, its body / head split, the two priors.

    Attributes:
        model: the trained module (DE-ELBo: the posterior means).
        groups: the body / head split of ``model``'s trainable parameters.
        body_prior: the body's Gaussian prior (``N(mu, lam Sigma)``; MAP: ``lam`` plays no part).
        head_prior: the head's zero-mean isotropic prior, ``None`` without a head.
        penalty: an optional classic :class:`~optuna_deelbo.regularizers.Penalty` on the (mean) weights.
    """

    name: str = "objective"
    model: nn.Module
    groups: ParameterGroups
    body_prior: GaussianPrior
    head_prior: GaussianPrior | None

    def __init__(self, penalty: Penalty | None = None) -> None:
        super().__init__()
        self.penalty = penalty

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters besides the model's own (e.g. the posterior's sigma)."""
        return iter(())

    def weight_posterior(self) -> WeightPosterior | None:
        """The posterior this objective trains (its sigma is logged and watched); ``None`` for MAP."""
        return None

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
        super().__init__(penalty)
        self.model = model
        self.groups = groups
        params = dict(model.named_parameters())
        self.body_prior = checked_prior(body_prior, groups.flat(params, "body").detach(), "body")
        self.head_prior = head_prior_for(head_prior, groups.flat(params, "head").detach()) if groups.head else None
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
    """The data-emphasized ELBo for the training loop: cross-entropy through one :class:`~optuna_deelbo.bayes.DEELBo`.

    The DE-ELBo itself (sampled forward, closed-form ``lam*`` / ``tau*``, the KL term, the posterior,
    ``N``, ``kappa``) is :attr:`deelbo`'s, and read there; this class adds only the classification
    likelihood, bf16 autocast and the optional :class:`Penalty`. :attr:`model`, :attr:`groups`,
    :attr:`body_prior` and :attr:`head_prior` (what the loop reads of any :class:`Objective`) are the
    DEELBo's own objects.

    Args:
        deelbo: the DE-ELBo (e.g. ``DEELBo(model, n_train, prior)`` or :meth:`DEELBo.from_recipe`).
        penalty: an optional classic penalty on the posterior means.
    """

    name = "deelbo"

    def __init__(self, deelbo: DEELBo, penalty: Penalty | None = None) -> None:
        if not isinstance(deelbo, DEELBo):
            raise TypeError(
                f"DEELBoObjective(deelbo=...) takes an od.DEELBo, got {type(deelbo).__name__}; "
                "build one first: DEELBoObjective(od.DEELBo(model, n_train, prior, head=groups, ...))"
            )
        super().__init__(penalty)
        self.deelbo = deelbo

    @property
    def model(self) -> nn.Module:  # type: ignore[override]
        """:attr:`deelbo`'s model (registered there once: the state_dict keys are ``deelbo.model.*``)."""
        return self.deelbo.model

    @property
    def groups(self) -> ParameterGroups:  # type: ignore[override]
        """:attr:`deelbo`'s body / head split."""
        return self.deelbo.groups

    @property
    def body_prior(self) -> GaussianPrior:  # type: ignore[override]
        """:attr:`deelbo`'s body prior (one object: a ``.to()`` of the DEELBo moves it)."""
        return self.deelbo.body_prior

    @property
    def head_prior(self) -> GaussianPrior | None:  # type: ignore[override]
        """:attr:`deelbo`'s head prior."""
        return self.deelbo.head_prior

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        return self.deelbo.sigma_parameters()

    def weight_posterior(self) -> WeightPosterior:
        return self.deelbo.posterior

    def forward(self, x: Tensor, y: Tensor, amp: bool = False) -> LossRecord:
        with _autocast(x, amp):
            logits = self.deelbo(x)
        return self.record(logits, y)

    def record(self, logits: Tensor, y: Tensor) -> LossRecord:
        """The step's record from the logits ``(B, C)`` of a sampled forward (:meth:`DEELBo.sampled_weights`).

        ``forward`` is ``record(deelbo(x), y)``; a batched search calls it once per member.
        """
        nll = nn.functional.cross_entropy(logits.float(), y)
        loss = self.deelbo.loss(nll)
        terms = self.deelbo.last_terms
        if self.penalty is not None:
            post = self.deelbo.posterior
            head = post.flat_mean("head") if self.groups.head else None
            loss = loss + self.extra_penalty(post.flat_mean("body"), head)
        return LossRecord(loss=loss, nll=nll, penalty=terms["kl"], lam=terms["lambda"], tau=terms.get("tau"))
