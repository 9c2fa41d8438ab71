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
from optuna_deelbo.bayes._posterior import ParameterGroups, SigmaMode, WeightPosterior
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
        self._attach_model(model)
        self.groups = groups
        self._init_priors(model, groups, body_prior, head_prior)

    def _init_priors(
        self, model: nn.Module, groups: ParameterGroups, body_prior: GaussianPrior, head_prior: GaussianPrior | None
    ) -> None:
        """Hold the priors, checked against the body / head, on the model's device (default head: N(0, tau I))."""
        params = dict(model.named_parameters())
        self.body_prior = checked_prior(body_prior, groups.flat(params, "body").detach(), "body")
        self.head_prior = head_prior_for(head_prior, groups.flat(params, "head").detach()) if groups.head else None

    def _attach_model(self, model: nn.Module) -> None:
        """Register ``model`` as this objective's ``model`` submodule (its state_dict prefix ``model.``)."""
        self.model = model

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
    """The data-emphasized ELBo for the training loop: cross-entropy through :class:`~optuna_deelbo.bayes.DEELBo`.

    The DE-ELBo step itself (sampled forward, closed-form ``lam*`` / ``tau*``, the KL term) is
    :class:`~optuna_deelbo.bayes.DEELBo`'s, held as :attr:`deelbo`; this class adds the
    classification likelihood, bf16 autocast and the optional :class:`Penalty`.

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
        self.deelbo = DEELBo(
            model,
            n_train,
            body_prior,
            head=groups,
            head_prior=head_prior,
            kappa=kappa,
            sigma_mode=sigma_mode,
            init_sigma=init_sigma,
            share_head_sigma=share_head_sigma,
            prior_structure=prior_structure,
        )

    @classmethod
    def around(cls, deelbo: DEELBo, penalty: Penalty | None = None) -> DEELBoObjective:
        """The objective of a ready :class:`~optuna_deelbo.bayes.DEELBo` (e.g. :meth:`DEELBo.from_recipe`), as is."""
        self = cls.__new__(cls)
        Objective.__init__(self, deelbo.model, deelbo.groups, deelbo.body_prior, deelbo.head_prior, penalty)
        self.deelbo = deelbo
        return self

    def _init_priors(
        self, model: nn.Module, groups: ParameterGroups, body_prior: GaussianPrior, head_prior: GaussianPrior | None
    ) -> None:
        """The priors are :attr:`deelbo`'s (checked and held there once; see :attr:`body_prior`)."""

    @property
    def body_prior(self) -> GaussianPrior:  # type: ignore[override]
        """:attr:`deelbo`'s body prior (one object: a ``.to()`` of the DEELBo moves it)."""
        return self.deelbo.body_prior

    @property
    def head_prior(self) -> GaussianPrior | None:  # type: ignore[override]
        """:attr:`deelbo`'s head prior."""
        return self.deelbo.head_prior

    def _attach_model(self, model: nn.Module) -> None:
        """The model is :attr:`deelbo`'s (registered there once)."""

    @property
    def model(self) -> nn.Module:  # type: ignore[override]
        """The trained module (the posterior means), owned by :attr:`deelbo`."""
        return self.deelbo.model

    @property
    def posterior(self) -> WeightPosterior:
        """The diagonal Gaussian posterior (``rho`` parameters)."""
        return self.deelbo.posterior

    @property
    def n_train(self) -> int:
        """``N``."""
        return self.deelbo.n_train

    @property
    def kappa(self) -> float:
        """The likelihood emphasis ``kappa``."""
        return self.deelbo.kappa

    @property
    def num_weights(self) -> int:
        """``D``, all trainable weights (body and head)."""
        return self.deelbo.num_weights

    @property
    def prior_structure(self) -> str:
        """``"shared"`` or ``"layer"``."""
        return self.deelbo.prior_structure

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Sizes of the body's parameter tensors (per-layer lambda blocks)."""
        return self.deelbo.block_sizes

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        return self.deelbo.sigma_parameters()

    def kl_terms(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(KL, lam*, tau*)``: see :meth:`DEELBo.kl_terms`."""
        return self.deelbo.kl_terms()

    def layer_variances(self) -> dict[str, float]:
        """``lam*`` per body parameter tensor: see :meth:`DEELBo.layer_variances`."""
        return self.deelbo.layer_variances()

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
            post = self.posterior
            head = post.flat_mean("head") if self.groups.head else None
            loss = loss + self.extra_penalty(post.flat_mean("body"), head)
        return LossRecord(loss=loss, nll=nll, penalty=terms["kl"], lam=terms["lambda"], tau=terms.get("tau"))

    def equivalent_weight_decay(self, variance: float) -> float:
        """The ``weight_decay`` a MAP run would need to match a learned prior variance (``1 / (lam kappa N)``)."""
        return self.deelbo.equivalent_weight_decay(variance)
