"""``DEELBo``: the data-emphasized ELBo as a drop-in regularizer for any training loop.

One implementation of the DE-ELBo step, used by :func:`optuna_deelbo.fit` (through
:class:`~optuna_deelbo.bayes.DEELBoObjective`), the Lightning callback and a user's own loop::

    reg = DEELBo(model, n_train=train_set, prior="l2-sp", head=("fc.",))  # N = len(train_set)
    opt = reg.optimizer(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True)  # weights + posterior std
    for x, y in loader:
        loss = reg.loss(criterion(reg(x), y))  # mean NLL of a sampled forward + KL / (kappa N)
        opt.zero_grad(); loss.backward(); opt.step()
    od.report_learned(trial, reg)  # learned:lambda / tau / sigma / weight_decay user attrs (tuning layer)
    return reg.selection_score(train_set)  # the trial's value: the final DE-ELBo over all N

``reg(x)`` runs the model with one posterior draw ``theta + sigma * eps`` when the model is in
train mode and with the mean weights when it is in eval mode (``model.eval()`` or
``reg.eval()``: the wrapped model's own flag decides). ``reg.loss(nll)`` adds ``KL(q || p(. | lam*, tau*)) / (kappa N)``
(nats per example) with both prior variances at their closed-form optimum for the current
weights, ``kappa = D / N`` by default. Any per-example loss works (cross-entropy, a Gaussian
NLL for regression, a token-level LM loss): pass its mean over the batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from optuna_deelbo._batches import count_examples
from optuna_deelbo._divergence_rule import DivergenceRule
from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import FLOAT32_MAX, check_seed, learning_rate, positive_finite, positive_int
from optuna_deelbo.bayes._batchnorm import batchnorm_layers, recalibrate_batchnorm
from optuna_deelbo.bayes._deelbo_recipe import PRIOR_STRUCTURES, DEELBoRecipe, check_sigma_mode
from optuna_deelbo.bayes._loop_health import LoopHealth
from optuna_deelbo.bayes._posterior import ParameterGroups, SigmaMode, WeightPosterior
from optuna_deelbo.bayes._priors import (
    GaussianPrior,
    IsotropicGaussian,
    LowRankGaussian,
    body_prior_for,
    head_prior_for,
)
from optuna_deelbo.bayes._selection import BatchNLL, BatchNormMode, expected_nll_and_count
from optuna_deelbo.bayes._wiring import WiringCheck, group_weights, optimizer_groups

__all__ = ["BatchNormWarning", "DEELBo", "n_examples"]


class BatchNormWarning(UserWarning):
    """BatchNorm statistics were used before being recomputed for the mean weights (see ``recalibrate_batchnorm``)."""


def n_examples(n_train: object) -> int:
    """``N`` from an int, or from the training data itself (``len(dataset)``; a loader counts its dataset)."""
    if isinstance(n_train, (int, float)) or n_train is None or isinstance(n_train, str):
        return positive_int(n_train, "n_train (N)")
    return positive_int(count_examples(n_train), "n_train (N)")


def _prior_state(prior: GaussianPrior | None) -> dict[str, Tensor] | None:
    if prior is None:
        return None
    if isinstance(prior, LowRankGaussian):
        return {"mean": prior.mean, "diagonal": prior.diagonal, "factor": prior.factor}
    return {"mean": prior.mean}


def _prior_from_state(state: Mapping[str, Tensor], like: Tensor) -> GaussianPrior:
    """The prior :func:`_prior_state` describes (same tensors when already like ``like``)."""
    mean = state["mean"].to(like)
    if "factor" in state:
        return LowRankGaussian(mean, state["diagonal"].to(like), state["factor"].to(like))
    return IsotropicGaussian(mean)


class _MethodCall(nn.Module):
    """``fn(*args, **kwargs)`` as a module whose only child is ``model`` (for ``functional_call``)."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


#: The key of the draws' generator state in :meth:`DEELBo.posterior_state` (with ``noise_seed``).
NOISE_STATE_KEY = "noise_generator_state"


class DEELBo(nn.Module):
    """A model with a diagonal Gaussian posterior and the DE-ELBo's closed-form prior variances.

    Args:
        model: any ``nn.Module``; not copied (its parameters are the posterior means).
        n_train: ``N``, the number of training examples (> 0), or the training data itself
            (a ``Dataset``, a ``DataLoader`` -- its dataset is counted, not its batches --,
            ``(x, y)`` tensors or an ``od.Split``).
        prior: body prior: ``"l2-sp"`` (mean = the body's weights at the first training
            forward, or at :meth:`fix_prior_mean`: load the pretrained weights before training,
            before or after wrapping),
            ``"l2-zero"``, or a :class:`~optuna_deelbo.bayes.GaussianPrior` (e.g. PTYL's
            :class:`~optuna_deelbo.bayes.LowRankGaussian`) over the body's flattened weights.
        head: parameter-name prefixes of a new head (zero-mean prior with its own variance
            ``tau``), or a :class:`~optuna_deelbo.bayes.ParameterGroups`; empty = all body.
        head_prior: head prior; default zero-mean isotropic.
        kappa: likelihood emphasis; ``None`` = ``D / N`` with ``D`` all trainable weights
            (``kappa = 1`` is the plain ELBo).
        sigma_mode: one of :data:`~optuna_deelbo.bayes.SIGMA_MODES` (``"scalar"``, ``"layer"``).
        init_sigma: initial posterior std (weight units).
        share_head_sigma: scalar mode: one sigma for body and head.
        prior_structure: one of :data:`PRIOR_STRUCTURES`.
        check_wiring: raise :class:`~optuna_deelbo.ConfigError` in the first steps when the
            optimizer leaves the posterior std (or the weights) out, or applies its own weight
            decay (see :meth:`optimizer`). Turn off only for a deliberate variant of the method.
        divergence: when the run counts as diverged (:meth:`check_divergence`); the rule
            ``od.fit`` applies.
        noise_seed: ``None`` (default): the posterior draws of training forwards come from
            torch's global generator (as dropout's do). An int: from a generator of this
            object's own, seeded with it, whose state is part of :meth:`posterior_state`, so a
            run resumed from a checkpoint continues with the draws of the uninterrupted run
            (the integrations use it: Lightning does not checkpoint the global generator).

    Raises:
        ConfigError: no trainable parameters, a head prefix that matches nothing, ``n_train <= 0``,
            an unknown prior, or a prior of the wrong size.
    """

    def __init__(
        self,
        model: nn.Module,
        n_train: int | object,
        prior: str | GaussianPrior = "l2-sp",
        *,
        head: Sequence[str] | ParameterGroups = (),
        head_prior: GaussianPrior | None = None,
        kappa: float | None = None,
        sigma_mode: SigmaMode = "scalar",
        init_sigma: float = 1e-3,
        share_head_sigma: bool = False,
        prior_structure: str = "shared",
        check_wiring: bool = True,
        divergence: DivergenceRule | None = None,
        noise_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.noise_seed = None if noise_seed is None else check_seed(noise_seed, "noise_seed")
        self._noise: torch.Generator | None = None  # made on the weights' device at the first draw
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        groups = head if isinstance(head, ParameterGroups) else ParameterGroups.split(model, head)
        self.n_train = n_examples(n_train)
        check_sigma_mode(sigma_mode)
        if prior_structure not in PRIOR_STRUCTURES:
            raise ConfigError(f"unknown prior_structure {prior_structure!r}; choose one of {PRIOR_STRUCTURES}")
        self.model = model
        self.groups = groups
        self.body_prior = body_prior_for(prior, groups.flat(dict(model.named_parameters()), "body").detach())
        #: ``"l2-sp"`` by name: the mean is taken from the weights at the first training forward.
        self._l2sp = isinstance(prior, str) and prior == "l2-sp"
        self._prior_mean_pending = self._l2sp
        if prior_structure == "layer" and not isinstance(self.body_prior, IsotropicGaussian):
            raise ConfigError(
                "prior_structure='layer' has a closed form only for isotropic body priors (l2-zero, l2-sp), "
                f"not {type(self.body_prior).__name__}"
            )
        params = dict(model.named_parameters())
        self.head_prior: GaussianPrior | None = None
        if groups.head:
            self.head_prior = head_prior_for(head_prior, groups.flat(params, "head").detach())
        elif head_prior is not None:
            raise ConfigError("head_prior given but no head: pass head=(prefix, ...) naming its parameters")
        self.prior_structure = prior_structure
        self.block_sizes = tuple(params[n].numel() for n in groups.body)
        self.num_weights = groups.numel(model, "body") + (groups.numel(model, "head") if groups.head else 0)
        self.kappa = positive_finite(
            self.num_weights / self.n_train if kappa is None else kappa, "kappa", high=FLOAT32_MAX
        )
        self.posterior = WeightPosterior(
            model, groups, sigma_mode=sigma_mode, init_sigma=init_sigma, share_head_sigma=share_head_sigma
        )
        self._sampled = False  # a sampled forward is waiting for its loss()
        self._last: dict[str, Tensor] = {}
        self._register_prior_buffers()
        self._wiring = WiringCheck(group_weights(model, groups.body, groups.head), self.sigma_parameters())
        if not check_wiring:
            self._wiring.close()
        self.health = LoopHealth(divergence or DivergenceRule())

    @classmethod
    def from_recipe(
        cls,
        model: nn.Module,
        n_train: int | object,
        prior: str | GaussianPrior,
        recipe: DEELBoRecipe,
        *,
        head: Sequence[str] | ParameterGroups = (),
        kappa: float | None = None,
    ) -> DEELBo:
        """A DEELBo with the posterior and prior structure of a :class:`~optuna_deelbo.bayes.DEELBoRecipe`.

        The recipe's ``sigma_mode``, ``init_sigma``, ``share_head_sigma`` and ``prior_structure`` (the
        training settings -- clipping, sigma's optimiser, selection -- are the loop's and ``od.fit``'s).
        """
        return cls(
            model,
            n_train,
            prior,
            head=head,
            kappa=kappa,
            sigma_mode=recipe.sigma_mode,
            init_sigma=recipe.init_sigma,
            share_head_sigma=recipe.share_head_sigma,
            prior_structure=recipe.prior_structure,
        )

    # --- the step -----------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's output: one posterior draw if the model is in train mode, the mean weights in eval mode."""
        if not self.model.training:
            return self.model(*args, **kwargs)
        self._before_sampled_forward(args)
        return functional_call(self.model, self.posterior.sample(self._noise_generator()), args, kwargs)

    def _before_sampled_forward(self, args: Sequence[Any]) -> None:
        self.posterior.check_parameters()  # a model whose parameters were replaced (pruned) since the DEELBo was built
        if self._prior_mean_pending:
            self.fix_prior_mean()
        batch = next((a for a in args if isinstance(a, Tensor) and a.ndim > 0), None)
        if batch is not None and batch.shape[0] > self.n_train:
            raise ConfigError(
                f"a training batch of {batch.shape[0]} examples but n_train={self.n_train}: n_train is N, the number "
                "of training examples (len(dataset), not len(loader), the number of batches); "
                "pass n_train=len(train_set) or the dataset itself"
            )
        self._sampled = True

    def _noise_generator(self) -> torch.Generator | None:
        """The generator of the training draws: ``None`` (torch's global one) unless ``noise_seed`` was given."""
        if self.noise_seed is None:
            return None
        if self._noise is None:
            device = next(iter(self.posterior.means().values())).device
            self._noise = torch.Generator(device=device).manual_seed(self.noise_seed)
        return self._noise

    @torch.no_grad()
    def fix_prior_mean(self) -> None:
        """Take the L2-SP prior mean from the body's weights now (``prior="l2-sp"`` only).

        The first training forward calls it, so weights loaded after wrapping (the pretrained
        ones) are the prior mean; call it yourself to fix the mean earlier. A state loaded with
        :meth:`load_state_dict` carries its own mean, which is kept.
        """
        if not self._l2sp:
            raise ConfigError("fix_prior_mean() is for prior='l2-sp'; a given prior keeps its own mean")
        body = self.groups.flat(dict(self.model.named_parameters()), "body")
        mean: Tensor = self.get_buffer("body_prior_mean")
        mean.copy_(body.to(mean))
        self._prior_mean_pending = False
        self._rebuild_priors()

    def call_sampled(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with the model's parameters replaced by one posterior draw.

        For code that reaches the model other than through ``forward`` (e.g. a LightningModule's
        ``training_step``); gradients flow to the means and to sigma as in :meth:`forward`.
        """
        self._before_sampled_forward(args)
        sample = {"model." + name: value for name, value in self.posterior.sample(self._noise_generator()).items()}
        return functional_call(_MethodCall(self.model, fn), sample, args, kwargs)

    def sampled_weights(self, *inputs: Any, noise: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """One posterior draw by parameter name, for a forward this object does not run itself.

        A batched search (:func:`optuna_deelbo.train.train_batched`) runs several members' draws
        in one ``vmap``-ed forward; this does the bookkeeping of a sampled forward (L2-SP mean
        fixed at the first one, the batch-size check on ``inputs``) so that :meth:`loss` follows.

        Args:
            inputs: the forward's inputs (checked as in :meth:`forward`).
            noise: ``eps`` by name (:meth:`WeightPosterior.draw_noise`), shared by the members; drawn here if ``None``.
        """
        self._before_sampled_forward(inputs)
        return self.posterior.sample(noise=noise)

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

    def loss(self, nll: Tensor) -> Tensor:
        """``nll + KL / (kappa N)``, the DE-ELBo per example (nats), for the last sampled forward.

        Args:
            nll: the batch's mean negative log-likelihood under the sampled weights, a 0-d tensor.

        Raises:
            ConfigError: ``nll`` is not a floating 0-d tensor, or no sampled forward (``reg(x)``
                in train mode, or :meth:`call_sampled`) came before this call.
        """
        if not isinstance(nll, Tensor) or nll.ndim != 0 or not nll.is_floating_point():
            shape = tuple(nll.shape) if isinstance(nll, Tensor) else type(nll).__name__
            raise ConfigError(
                f"loss() takes the batch's mean NLL as a 0-d float tensor, got {shape}; reduce it with .mean()"
            )
        if not self._sampled:
            raise ConfigError(
                "loss() before a sampled forward: call reg(x) in train mode (reg.train()) first, "
                "then reg.loss(criterion(output, y))"
            )
        self._sampled = False
        self._wiring.observe()
        with torch.autocast(device_type=nll.device.type, enabled=False):
            kl, lam, tau = self.kl_terms()
        self._last = {"kl": kl.detach(), "lambda": lam}
        if tau is not None:
            self._last["tau"] = tau
        self.health.record(nll.detach())
        return nll + kl / (self.kappa * self.n_train)

    def optimizer(
        self,
        optimizer_class: Callable[..., torch.optim.Optimizer],
        *,
        param_groups: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> torch.optim.Optimizer:
        """``optimizer_class`` over the weights and the posterior std, with ``weight_decay=0``.

        Args:
            optimizer_class: any ``torch.optim`` optimizer class (``SGD``, ``AdamW``, ...).
            param_groups: your own groups over the model's weights (e.g. a smaller learning rate
                for the body); every trainable weight once. The posterior std joins as one more
                group with the optimizer's defaults.
            **kwargs: the optimizer's arguments (``lr``, ``momentum``, ...); ``weight_decay`` must
                be 0 or absent (the KL is the weight decay).
        """
        if kwargs.get("weight_decay"):
            raise ConfigError(
                f"weight_decay={kwargs['weight_decay']!r}: the DE-ELBo learns the weight decay (the KL term); "
                "pass weight_decay=0 or leave it out"
            )
        kwargs.pop("weight_decay", None)
        if "lr" in kwargs:
            learning_rate(kwargs["lr"], "lr")
        for i, group in enumerate(param_groups or ()):
            if "lr" in group:
                learning_rate(group["lr"], f"param_groups[{i}]['lr']")
        weights = [p for p in self.model.parameters() if p.requires_grad]
        groups = optimizer_groups(weights, list(self.sigma_parameters()), param_groups, optimizer_class)
        return optimizer_class(groups, **kwargs)

    @property
    def last_terms(self) -> dict[str, Tensor]:
        """The last :meth:`loss` call's ``kl`` (nats), ``lambda`` and ``tau`` (0-d, on the device, detached)."""
        return dict(self._last)

    # --- learned values ---------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """``lam*`` of the body prior at the current weights (weight units squared; layer: size-weighted mean)."""
        with torch.no_grad():
            return float(self.kl_terms()[1])

    @property
    def tau(self) -> float | None:
        """``tau*`` of the head prior at the current weights, ``None`` without a head."""
        with torch.no_grad():
            tau = self.kl_terms()[2]
        return None if tau is None else float(tau)

    @property
    def sigma(self) -> float:
        """Mean posterior std over all weights (weight units)."""
        return self.posterior.mean_sigma()

    @property
    def weight_decay(self) -> float:
        """The MAP weight decay equivalent to the learned body variance, ``1 / (lam kappa N)``."""
        return self.equivalent_weight_decay(self.lam)

    def equivalent_weight_decay(self, variance: float) -> float:
        """The ``weight_decay`` a MAP run would need to match a prior variance ``variance``.

        The DE-ELBo's per-example loss holds ``|theta - mu|^2 / (2 lam kappa N)``, the MAP
        loss ``weight_decay/2 * |theta - mu|^2``; so ``weight_decay = 1 / (lam * kappa * N)``.
        """
        return 1.0 / (variance * self.kappa * self.n_train)

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

    def learned_values(self) -> dict[str, Any]:
        """The learned values at the current weights, by plain name.

        ``lambda`` (body prior variance, weight units squared), ``weight_decay`` (the MAP weight decay
        it equals, :meth:`equivalent_weight_decay`), ``sigma`` (mean posterior std), ``tau`` (head prior
        variance, when the model has a head), ``lambda_layers`` (per tensor, with ``prior_structure="layer"``),
        and ``mode`` (``"deelbo"``) and ``kappa``. :func:`optuna_deelbo.report_learned` writes them on a trial
        (as ``learned:<name>``).
        """
        with torch.no_grad():
            _, lam_t, tau_t = self.kl_terms()  # one evaluation for lambda and tau
        lam = float(lam_t)
        values: dict[str, Any] = {
            "mode": "deelbo",
            "kappa": self.kappa,
            "lambda": lam,
            "weight_decay": self.equivalent_weight_decay(lam),
            "sigma": self.sigma,
        }
        if tau_t is not None:
            values["tau"] = float(tau_t)
        if self.prior_structure == "layer":
            values["lambda_layers"] = self.layer_variances()
        return values

    def check_divergence(self) -> None:
        """Raise :class:`~optuna_deelbo.TrainingDiverged` if the run so far counts as diverged.

        The rule is ``od.fit``'s (:class:`~optuna_deelbo.train.DivergenceRule`: a non-finite NLL, a
        posterior std above ``max_sigma``, or the running NLL -- a moving average over about
        the last 10 steps -- above ``nll_factor`` times the first step's). :func:`optuna_deelbo.report_learned`
        and :meth:`selection_score` call it; ``report_learned`` then prunes the trial with the reason
        in its ``failure:reason`` user attr, as ``od.fit`` does.
        """
        self.health.check(self.posterior.max_sigma())

    @torch.no_grad()
    def selection_score(
        self,
        data: object,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        samples: int = 10,
        seed: int = 0,
        batch_size: int = 512,
        transform: Callable[[Tensor], Tensor] | None = None,
        batchnorm: BatchNormMode = "batch",
        batch_nll: BatchNLL | None = None,
    ) -> float:
        """The trial value that picks the learning rate: the final DE-ELBo over the whole training set.

        ``E_q[NLL] + KL / (kappa N)`` in nats per example (lower is better), the expectation over
        ``samples`` posterior draws from a generator seeded by ``seed`` (the same draws for every
        learning rate), dropout off, the data as given (pass it unaugmented). Unlike a mean of
        the last minibatches' losses it does not depend on the loop's batch order, schedule or
        augmentation. ``N`` must be all the training data.

        Args:
            data: the training set in any form (``(x, y)``, an ``od.Split``, a ``Dataset``, a
                ``DataLoader``); it must hold exactly ``n_train`` examples.
            loss_fn: ``(output, labels) -> mean NLL``; default cross-entropy.
            batch_size: examples per forward pass (a ``DataLoader`` keeps its own); with
                ``batchnorm="batch"`` also the examples each BatchNorm statistic is taken over.
            batchnorm: ``"batch"`` (default): each sampled forward normalises with its batch's
                statistics, as the training forwards did; ``"running"``: eval mode, the running
                statistics (the reference code). Measured on digits (benchmarks/results/
                own-loop-selection-running.md): with ``"running"`` a posterior std of 0.06 raised the
                score of the best learning rate from 0.21 to 1.22 nats and the rule picked a
                worse one; the weights were trained with batch statistics, not running ones.
            batch_nll: for batches that are not ``(inputs, labels)`` (a Hugging Face loader's dicts):
                ``(forward, batch) -> (mean NLL, examples)``, see :data:`~optuna_deelbo.bayes.BatchNLL`.

        Raises:
            ConfigError: ``data`` does not hold ``n_train`` examples.
            TrainingDiverged: the run diverged (see :meth:`check_divergence`).
        """
        if batch_nll is None:  # with batch_nll, the examples are counted while they are scored
            self._check_whole_training_set(count_examples(data))
        self.check_divergence()
        if batchnorm == "running" and batchnorm_layers(self.model) and self.health.batchnorm_stale:
            warnings.warn(
                "selection_score(): the BatchNorm statistics are those of the sampled training forwards; call "
                "reg.recalibrate_batchnorm(train_data) after training (the statistics of the mean weights, "
                "which also predict better)",
                BatchNormWarning,
                stacklevel=2,
            )
        nll, n = expected_nll_and_count(
            self,
            data,
            samples=samples,
            seed=seed,
            batch_size=batch_size,
            transform=transform,
            loss_fn=loss_fn,
            batchnorm=batchnorm,
            batch_nll=batch_nll,
        )
        self._check_whole_training_set(n)
        kl = float(self.kl_terms()[0])
        return nll + kl / (self.kappa * self.n_train)

    def _check_whole_training_set(self, n: int) -> None:
        if n != self.n_train:
            raise ConfigError(
                f"selection_score() reads the whole training set: got {n} examples but n_train={self.n_train}"
            )

    # --- prediction and BatchNorm ---------------------------------------------------------------
    def predict_proba(self, x: Tensor, samples: int = 0) -> Tensor:
        """Class probabilities ``(B, C)``: mean weights (``samples=0``) or the average over ``samples`` draws."""
        return self.posterior.predict_proba(x, samples=samples)

    def recalibrate_batchnorm(
        self,
        data: Tensor | Iterable[Any],
        *,
        transform: Callable[[Tensor], Tensor] | None = None,
        batch_size: int = 256,
        call: Callable[[Any], object] | None = None,
    ) -> int:
        """Recompute the model's BatchNorm statistics with the mean weights (after training).

        Training forwards run with sampled weights, so the running statistics describe noisy
        activations; call this once before predicting. ``data``: the training inputs ``(N, ...)``
        or an iterable of batches (a ``DataLoader``; a ``(x, y, ...)`` batch uses ``x``).
        ``transform``: the training augmentation, if any. ``call``: runs one raw batch instead of
        ``model(x)`` (see :func:`~optuna_deelbo.recalibrate_batchnorm`). Returns the number of
        BatchNorm layers.
        """
        layers = recalibrate_batchnorm(self.model, data, transform=transform, batch_size=batch_size, call=call)
        self.health.recalibrated_at = self.health.steps
        return layers

    # --- state ------------------------------------------------------------------------------
    def posterior_state(self) -> dict[str, Tensor]:
        """:meth:`state_dict` without the model's weights: the posterior std and the priors (the L2-SP mean).

        For checkpoints that already hold the weights (Lightning's, the Hugging Face Trainer's).
        With ``noise_seed``, also the state of the draws' generator (``noise_generator_state``).
        """
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}
        generator = self._noise_generator()
        if generator is not None:
            state[NOISE_STATE_KEY] = generator.get_state()
        return state

    def load_posterior_state(self, state: Mapping[str, Tensor]) -> None:
        """Load :meth:`posterior_state`'s dict (the weights stay as they are).

        Raises:
            ConfigError: the state belongs to another model (unexpected, missing or differently shaped keys).
        """
        state = dict(state)
        noise = state.pop(NOISE_STATE_KEY, None)
        generator = self._noise_generator()
        if noise is not None and generator is not None:
            generator.set_state(noise.cpu())
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of another shape: another model's state
            reason = str(exc).strip().splitlines()[-1].strip()
            raise ConfigError(f"the checkpoint's DE-ELBo state does not fit this model: {reason}") from None
        if unexpected or any(not k.startswith("model.") for k in missing):
            raise ConfigError(f"the checkpoint's DE-ELBo state does not fit this model: {unexpected or missing}")

    def _register_prior_buffers(self) -> None:
        """The priors' tensors as buffers (``body_prior_mean``, ...): in ``state_dict``, moved by ``.to()``."""
        for group, prior in (("body", self.body_prior), ("head", self.head_prior)):
            for key, tensor in (_prior_state(prior) or {}).items():
                self.register_buffer(f"{group}_prior_{key}", tensor)
        self.register_load_state_dict_post_hook(_after_load)  # a module-level function: the DEELBo pickles

    def _loaded(self) -> None:
        self._prior_mean_pending = False  # the state's own prior mean
        self._rebuild_priors()

    def _rebuild_priors(self) -> None:
        """Priors from the buffers (after ``load_state_dict`` or a device / dtype move)."""
        buffers = dict(self.named_buffers(recurse=False))
        for group in ("body", "head"):
            state = {
                k.removeprefix(f"{group}_prior_"): v for k, v in buffers.items() if k.startswith(f"{group}_prior_")
            }
            if state:
                setattr(self, f"{group}_prior", _prior_from_state(state, state["mean"]))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DEELBo:
        super()._apply(fn, recurse)
        self._rebuild_priors()
        return self

    def sigma_parameters(self) -> Iterator[nn.Parameter]:
        """The posterior's raw ``rho`` parameters (also in :meth:`parameters`, after the model's)."""
        return self.posterior.sigma_parameters()


def _after_load(module: DEELBo, _keys: object) -> None:
    """``load_state_dict`` post-hook: the priors from the loaded buffers."""
    module._loaded()
