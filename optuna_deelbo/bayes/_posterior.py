"""A diagonal Gaussian posterior over the weights of any ``nn.Module``.

The mean is the module's own parameters (they stay where they are and keep training); the
standard deviation is ``max(softplus(rho), SIGMA_FLOOR)`` with ``rho`` held here. The floor
(1e-12 weight units) keeps sigma, ``log sigma`` and its gradient finite in float32 and
bfloat16, where ``softplus(rho)`` underflows to 0 for ``rho`` below about -104 (and
``d log softplus(rho) / d rho`` is then 0/0); no useful posterior std comes near it. A sample
``theta~ = theta + sigma * eps`` is fed to the unchanged module through
``torch.func.functional_call``, so no layer is rewritten and BatchNorm statistics and other
buffers keep updating on the module itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import FLOAT32_MAX, positive_finite

__all__ = ["POSTERIOR_SIGMA_MODES", "SIGMA_FLOOR", "ParameterGroups", "SigmaMode", "WeightPosterior"]

SigmaMode = Literal["scalar", "layer", "parameter"]
#: What the posterior can hold. ``scalar``: one sigma per group; ``layer``: one per parameter tensor;
#: ``parameter``: one per weight (for other objectives: the DE-ELBo refuses it, see
#: :data:`optuna_deelbo.bayes.SIGMA_MODES`).
POSTERIOR_SIGMA_MODES: tuple[str, ...] = ("scalar", "layer", "parameter")
#: Smallest posterior std (weight units): ``sigma = max(softplus(rho), SIGMA_FLOOR)``. Its square,
#: 1e-24, is a normal number in float32 and bfloat16, so ``log sigma^2`` and ``lambda*`` stay finite.
SIGMA_FLOOR = 1e-12


@dataclass(frozen=True)
class ParameterGroups:
    """The trainable parameters of a module split into a body and a (new) head.

    Attributes:
        body: names of the backbone parameters (prior ``p(theta | lambda)``).
        head: names of the head parameters (own prior ``p(phi | tau)``); may be empty.
    """

    body: tuple[str, ...]
    head: tuple[str, ...]

    @classmethod
    def split(cls, model: nn.Module, head_prefixes: Sequence[str] = ()) -> ParameterGroups:
        """Split ``model``'s trainable parameters by name prefix (e.g. ``("fc.",)`` for ResNets)."""
        if isinstance(head_prefixes, str):
            head_prefixes = (head_prefixes,)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not names:
            raise ConfigError("the model has no trainable parameters")
        head = tuple(n for n in names if any(n.startswith(pre) for pre in head_prefixes))
        if head_prefixes and not head:
            raise ConfigError(
                f"no parameter name starts with any head prefix {tuple(head_prefixes)}; names: {names[:8]}..."
            )
        body = tuple(n for n in names if n not in head)
        if not body:
            raise ConfigError("every trainable parameter is in the head; the body prior would be empty")
        return cls(body=body, head=head)

    def flat(self, tensors: Mapping[str, Tensor], group: Literal["body", "head"]) -> Tensor:
        """Concatenate ``tensors[name]`` for the group's names into one flat vector ``(D,)``."""
        names = self.body if group == "body" else self.head
        return torch.cat([tensors[n].reshape(-1) for n in names])

    def numel(self, model: nn.Module, group: Literal["body", "head"]) -> int:
        """Number of weights in a group."""
        params = dict(model.named_parameters())
        names = self.body if group == "body" else self.head
        return sum(params[n].numel() for n in names)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _sigma_from_rho(rho: Tensor) -> Tensor:
    """``max(softplus(rho), SIGMA_FLOOR)``: positive and finite for any finite ``rho``, in any float dtype."""
    return nn.functional.softplus(rho).clamp_min(SIGMA_FLOOR)


class WeightPosterior(nn.Module):
    """``q(theta) = N(theta, diag(sigma^2))`` whose mean is ``model``'s parameters.

    Args:
        model: any module; it is not copied and not modified.
        groups: body/head split of its trainable parameters.
        sigma_mode: ``"scalar"`` (one sigma for the body, one for the head), ``"layer"`` (one
            per parameter tensor) or ``"parameter"`` (one per weight).
        init_sigma: initial standard deviation (weight units), >= :data:`SIGMA_FLOOR`.
        share_head_sigma: scalar mode only: one sigma for body and head together.
    """

    model: nn.Module

    def __init__(
        self,
        model: nn.Module,
        groups: ParameterGroups,
        sigma_mode: SigmaMode = "scalar",
        init_sigma: float = 1e-3,
        share_head_sigma: bool = False,
    ) -> None:
        super().__init__()
        if sigma_mode not in POSTERIOR_SIGMA_MODES:
            raise ConfigError(f"unknown sigma_mode {sigma_mode!r}; choose one of {POSTERIOR_SIGMA_MODES}")
        if positive_finite(init_sigma, "init_sigma", high=FLOAT32_MAX) < SIGMA_FLOOR:
            raise ConfigError(f"init_sigma must be >= the posterior std floor {SIGMA_FLOOR:g}, got {init_sigma!r}")
        if share_head_sigma and sigma_mode != "scalar":
            raise ConfigError(f"share_head_sigma needs sigma_mode='scalar', got {sigma_mode!r}")
        self.share_head_sigma = share_head_sigma
        # Held, not registered: the owner (DEELBo) registers the model once, so its state_dict
        # and parameters() hold the weights once and only ``rho`` is this module's own.
        object.__setattr__(self, "model", model)
        self.groups = groups
        self.sigma_mode = sigma_mode
        params = dict(model.named_parameters())
        rho0 = _inverse_softplus(init_sigma)
        self.rho = nn.ParameterDict()
        if sigma_mode == "scalar":
            for group in ("body",) if share_head_sigma else ("body", "head"):
                if getattr(groups, group):
                    ref = params[getattr(groups, group)[0]]
                    self.rho[group] = nn.Parameter(torch.full((), rho0, dtype=ref.dtype, device=ref.device))
        else:
            for name in groups.body + groups.head:
                p = params[name]
                shape = () if sigma_mode == "layer" else p.shape
                self.rho[self._key(name)] = nn.Parameter(torch.full(shape, rho0, dtype=p.dtype, device=p.device))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "/")

    def _scalar_key(self, group: str) -> str:
        return "body" if self.share_head_sigma else group

    def _sigma_of(self, name: str) -> Tensor:
        if self.sigma_mode == "scalar":
            group = "head" if name in self.groups.head else "body"
            return _sigma_from_rho(self.rho[self._scalar_key(group)])
        return _sigma_from_rho(self.rho[self._key(name)])

    def means(self) -> dict[str, Tensor]:
        """The posterior means: the module's trainable parameters, by name."""
        params = dict(self.model.named_parameters())
        self.check_parameters(params)
        return {n: params[n] for n in self.groups.body + self.groups.head}

    def check_parameters(self, params: Mapping[str, Tensor] | None = None) -> None:
        """Raise :class:`ConfigError` if the model lost a parameter the posterior is over (pruned, replaced)."""
        params = dict(self.model.named_parameters()) if params is None else params
        names = self.groups.body + self.groups.head
        missing = [n for n in names if n not in params]
        if missing:
            renamed = (
                f" ({missing[0]}_orig is there: torch.nn.utils.prune renamed it)"
                if f"{missing[0]}_orig" in params
                else ""
            )
            raise ConfigError(
                f"the model no longer has the parameter {missing[0]!r}{renamed}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + ": the DE-ELBo's posterior is over the parameters the model had when the DEELBo was built, so "
                "it cannot train a model whose parameters were replaced mid-run (pruning, a swapped layer). Prune "
                "after DE-ELBo training, or build the DEELBo after the model is changed"
            )

    def sigmas(self) -> dict[str, Tensor]:
        """Per-tensor standard deviations, broadcastable to each parameter's shape."""
        return {n: self._sigma_of(n) for n in self.groups.body + self.groups.head}

    def flat_sigma(self, group: Literal["body", "head"]) -> Tensor:
        """The group's sigma as the priors take it: shape ``()`` (scalar mode) or ``(D,)``."""
        if self.sigma_mode == "scalar":
            return _sigma_from_rho(self.rho[self._scalar_key(group)])
        means = self.means()
        names = self.groups.body if group == "body" else self.groups.head
        return torch.cat([self._sigma_of(n).expand_as(means[n]).reshape(-1) for n in names])

    def flat_mean(self, group: Literal["body", "head"]) -> Tensor:
        """The group's posterior mean as one flat vector ``(D,)``."""
        return self.groups.flat(self.means(), group)

    def draw_noise(self, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Standard normal ``eps`` shaped like each trainable parameter, drawn in parameter order.

        :meth:`sample` draws exactly these (same RNG stream), so posteriors of equally shaped
        models that share one ``draw_noise`` (a batched learning-rate search) get the draws that
        their own :meth:`sample` would have made from the same RNG state.
        """
        return {name: torch.empty_like(mean).normal_(generator=generator) for name, mean in self.means().items()}

    def sample(
        self, generator: torch.Generator | None = None, *, noise: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """One reparameterised draw ``theta + sigma * eps`` per trainable parameter (differentiable).

        Args:
            generator: the RNG of ``eps`` (default: torch's global one).
            noise: ``eps`` given (:meth:`draw_noise`'s dict) instead of drawn.
        """
        eps = self.draw_noise(generator) if noise is None else noise  # keeps each mean's memory format
        sigmas = self.sigmas()
        return {name: torch.addcmul(mean, sigmas[name], eps[name]) for name, mean in self.means().items()}

    def forward_sample(self, *args: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Run the module with one sampled set of weights (buffers, e.g. BatchNorm, update as usual)."""
        return functional_call(self.model, self.sample(generator), args)

    def sigma_parameters(self) -> Iterator[nn.Parameter]:
        """The raw ``rho`` parameters to hand to the optimizer."""
        return iter(self.rho.values())

    @torch.no_grad()
    def predict_proba(self, x: Tensor, samples: int = 0, generator: torch.Generator | None = None) -> Tensor:
        """Class probabilities ``(B, C)``: with the mean weights (``samples=0``) or averaged over ``S`` draws.

        The module is put in eval mode for the call (BatchNorm uses running statistics) and
        restored afterwards.
        """
        if samples < 0:
            raise ConfigError(f"samples must be >= 0, got {samples}")
        was_training = self.model.training
        self.model.eval()
        try:
            if samples == 0:
                return torch.softmax(self.model(x).float(), dim=-1)
            probs = torch.stack(
                [torch.softmax(self.forward_sample(x, generator=generator).float(), dim=-1) for _ in range(samples)]
            )
            return probs.mean(dim=0)
        finally:
            self.model.train(was_training)

    def mean_sigma(self) -> float:
        """Average sigma over all weights (a scalar summary for logs, weight units)."""
        total = 0.0
        count = 0
        means = self.means()
        for name, sigma in self.sigmas().items():
            n = means[name].numel()
            sigma = sigma.detach()
            total += float(sigma.expand_as(means[name]).sum()) if sigma.ndim else float(sigma) * n
            count += n
        return total / count

    def max_sigma(self) -> float:
        """The largest sigma over all weights (weight units; one host synchronisation)."""
        return float(torch.stack([s.detach().max().double() for s in self.sigmas().values()]).max())
