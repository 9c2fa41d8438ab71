"""Learning-rate selection without a validation set: scores of a finished DE-ELBo run.

Each rule maps a trained :class:`~optuna_deelbo.bayes.DEELBo` to one number in
nats per training example, lower is better; the DE-ELBo strategy keeps the learning rate whose
run scores lowest. All but ``train-loss`` read the whole training set once more, unaugmented
(the task's evaluation transform), with BatchNorm in eval mode:

* ``train-loss``: the mean training objective over the last epoch's minibatches (training-mode
  BatchNorm, augmented batches, one posterior sample each); free, it is logged anyway.
* ``full-pass``: the reference code's criterion, ``E_q[NLL] + KL / (kappa N)`` with the
  expectation over ``samples`` posterior draws.
* ``elbo``: the plain ELBo (``kappa = 1``) of the final posterior, ``E_q[NLL] + KL / N``.
* ``laplace``: minus the Laplace approximation of the log marginal likelihood at the mean
  weights (MacKay 1992; Immer et al. 2021) with a diagonal generalised Gauss-Newton,
  estimated without bias by one sampled label per example (the Monte-Carlo Fisher), and each
  prior variance at the value that maximises it:
  ``-log p(D) ~ NLL_sum + 0.5 m^T P m - 0.5 log det P + 0.5 sum_j log(h_j + P_jj)``, per example.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from optuna_deelbo._batches import count_examples, labelled_batches
from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import check_seed, positive_int
from optuna_deelbo.bayes._batchnorm import batchnorm_layers
from optuna_deelbo.bayes._deelbo_recipe import SELECTION_RULES
from optuna_deelbo.bayes._posterior import ParameterGroups, WeightPosterior
from optuna_deelbo.bayes._priors import GaussianPrior

__all__ = [
    "BATCHNORM_MODES",
    "BatchNormMode",
    "expected_nll",
    "expected_nll_and_count",
    "laplace_neg_log_evidence",
    "selection_scores",
]

Transform = Callable[[Tensor], Tensor] | None
#: How BatchNorm normalises while a run is scored (see :func:`expected_nll`).
BatchNormMode = Literal["running", "batch"]
BATCHNORM_MODES: tuple[str, ...] = ("running", "batch")
#: ``loss_fn(output, labels)``: the batch's mean NLL (nats per example), as a 0-d tensor.
LossFn = Callable[[Tensor, Tensor], Tensor]
#: ``batch_nll(forward, batch) -> (mean NLL, examples)`` for batches that are not ``(inputs, labels)``
#: (e.g. a Hugging Face dict of ``input_ids``, ``attention_mask``, ``labels``): ``forward(*args, **kwargs)``
#: runs the model with the posterior draw; the function moves the batch to the device itself.
BatchNLL = Callable[[Callable[..., Any], Any], tuple[Tensor, int]]


class _HasPosterior(Protocol):
    """What the expected NLL reads of a :class:`~optuna_deelbo.bayes.DEELBo`: its model and posterior."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def posterior(self) -> WeightPosterior: ...


class ScoredRun(_HasPosterior, Protocol):
    """A finished DE-ELBo run as the Laplace and ELBo rules read it (a :class:`~optuna_deelbo.bayes.DEELBo`).

    Declared here, not imported, so the scores depend on nothing of the DE-ELBo's own modules.
    """

    @property
    def groups(self) -> ParameterGroups: ...

    @property
    def body_prior(self) -> GaussianPrior: ...

    @property
    def prior_structure(self) -> str: ...

    @property
    def block_sizes(self) -> tuple[int, ...]: ...

    @property
    def n_train(self) -> int: ...

    @property
    def kappa(self) -> float: ...

    def kl_terms(self) -> tuple[Tensor, Tensor, Tensor | None]: ...


def _batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    return [
        (x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)) for s in range(0, x.shape[0], batch_size)
    ]


def _call_with(model: nn.Module, weights: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with its parameters replaced by ``weights``."""
    return functional_call(model, weights, args, kwargs)


def _cross_entropy(output: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(output.float(), labels)


@torch.no_grad()
def expected_nll(
    source: _HasPosterior,
    x: object,
    y: Tensor | None = None,
    *,
    samples: int = 10,
    transform: Transform = None,
    batch_size: int = 512,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    batchnorm: BatchNormMode = "running",
    batch_nll: BatchNLL | None = None,
) -> float:
    """``E_q[NLL]``: the mean NLL (nats per example) on the data averaged over ``samples`` posterior draws.

    Args:
        source: a ``DEELBo`` (its model and posterior; a training loop's ``DEELBoObjective``: its ``.deelbo``).
        x: inputs ``(N, ...)`` with labels ``y``; or, with ``y=None``, the data in any form
            ``od.evaluate`` takes (``(x, y)``, an ``od.Split``, a ``Dataset``, a ``DataLoader``).
        loss_fn: the batch's mean NLL from ``(output, labels)``; default cross-entropy.
        batchnorm: ``"running"``: BatchNorm normalises with its running statistics (eval mode,
            the reference code's criterion); ``"batch"``: with each batch's own statistics, as in
            the training forwards the posterior was fitted with (the running statistics are
            left as they were). Every other layer is in eval mode either way.
        batch_nll: scores each raw batch of ``x`` (any iterable of batches: a ``DataLoader``, one
            over an ``IterableDataset``, a loader object of your own) instead of
            ``loss_fn(model(inputs), labels)``; see :data:`BatchNLL`. ``x`` is then read as it is,
            once per draw, and its examples are the counts ``batch_nll`` returns.

    The draws come from a generator seeded by ``seed`` (same draws for every run that is compared).
    """
    return expected_nll_and_count(
        source,
        x,
        y,
        samples=samples,
        transform=transform,
        batch_size=batch_size,
        seed=seed,
        loss_fn=loss_fn,
        batchnorm=batchnorm,
        batch_nll=batch_nll,
    )[0]


@torch.no_grad()
def expected_nll_and_count(
    source: _HasPosterior,
    x: object,
    y: Tensor | None = None,
    *,
    samples: int = 10,
    transform: Transform = None,
    batch_size: int = 512,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    batchnorm: BatchNormMode = "running",
    batch_nll: BatchNLL | None = None,
) -> tuple[float, int]:
    """:func:`expected_nll` and the number of examples it read (with ``batch_nll``: the sum of its counts)."""
    positive_int(samples, "samples")
    check_seed(seed)
    data = x if y is None else (x, y)
    n = count_examples(data) if batch_nll is None else None
    if n == 0:
        raise ConfigError("cannot score a run on an empty data set")
    loss_fn = loss_fn or _cross_entropy
    model = source.model
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if batchnorm not in BATCHNORM_MODES:
        raise ConfigError(f"unknown batchnorm mode {batchnorm!r}; choose one of {BATCHNORM_MODES}")
    was_training = model.training
    model.eval()
    layers = batchnorm_layers(model) if batchnorm == "batch" else []
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    for m in layers:
        m.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for _ in range(samples):
            weights = source.posterior.sample(generator)
            if batch_nll is not None:
                forward = functools.partial(_call_with, model, weights)
                seen = 0
                for batch in data:  # type: ignore[attr-defined]
                    nll, count = batch_nll(forward, batch)
                    total += nll.double() * count
                    seen += count
                if n is not None and seen != n:
                    raise ConfigError(f"the data gave {seen} examples in one pass and {n} in the one before")
                n = seen
                continue
            for xb, yb in labelled_batches(data, batch_size):
                xb, yb = xb.to(device), yb.to(device)
                inputs = transform(xb) if transform is not None else xb
                output = functional_call(model, weights, (inputs,))
                total += loss_fn(output, yb).double() * xb.shape[0]
    finally:
        for m, state in zip(layers, saved, strict=True):
            m.load_state_dict(state)
        model.train(was_training)
    if not n:
        raise ConfigError("cannot score a run on an empty data set")
    return float(total) / (samples * n), n


def _ggn_diagonal(
    model: nn.Module,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    transform: Transform,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, Tensor], float]:
    """Diagonal GGN ``sum_i J_i^T Lambda_i J_i`` by the Monte-Carlo Fisher, and ``NLL_sum`` at the mean weights."""
    device = next(model.parameters()).device
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())
    generator = torch.Generator(device=device).manual_seed(seed)

    def one_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out.float(), yi.unsqueeze(0))

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))
    diag = {n: torch.zeros_like(p) for n, p in params.items()}
    nll_sum = 0.0
    for xb, yb in _batches(x, y, batch_size, device):
        inputs = transform(xb) if transform is not None else xb
        with torch.no_grad():
            logits = model(inputs).float()
            nll_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            sampled = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
        grads = per_example(params, inputs, sampled)
        for n, g in grads.items():
            diag[n] += (g.detach() ** 2).sum(dim=0)
    return diag, nll_sum


def _block_evidence_term(h: Tensor, quad: Tensor, precision_diag: Tensor, logdet_cov: Tensor) -> float:
    """``min over lam`` of ``0.5 [quad/lam + D log lam + logdet Sigma + sum_j log(h_j + P_jj/lam)]`` (float64).

    One prior block ``N(mu, lam Sigma)`` with Hessian diagonal ``h``; ``lam`` is searched on a
    log grid (1e-12 .. 1e4, 57 points) then refined by golden-section search.
    """
    h, p = h.double(), precision_diag.double()
    dim = h.numel()
    q, c = float(quad), float(logdet_cov)

    def f(log_lam: float) -> float:
        lam = math.exp(log_lam)
        return 0.5 * (q / lam + dim * log_lam + c + float(torch.log(h + p / lam).sum()))

    grid = [math.log(10.0) * (-12 + 0.25 * i) for i in range(65)]
    values = [f(g) for g in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return min(values[best], f(0.5 * (lo + hi)))


def laplace_neg_log_evidence(
    objective: ScoredRun,
    x: Tensor,
    y: Tensor,
    *,
    transform: Transform = None,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Minus the diagonal-GGN Laplace log evidence of the mean weights, per example (nats).

    The prior has the objective's structure (body ``N(mu, lam Sigma)``, one ``lam`` per body
    tensor with ``prior_structure="layer"``; head ``N(0, tau I)``) with each variance set to
    maximise this evidence (the type-II maximum of MacKay's evidence framework), so the score
    does not inherit the DE-ELBo's own ``lam*``. BatchNorm in eval mode.
    """
    if x.shape[0] == 0:
        raise ConfigError("cannot score a run on an empty data set")
    model = objective.model
    groups = objective.groups
    was_training = model.training
    model.eval()
    try:
        diag, nll_sum = _ggn_diagonal(model, groups.body + groups.head, x, y, transform, batch_size, seed)
    finally:
        model.train(was_training)
    with torch.no_grad():
        post, prior = objective.posterior, objective.body_prior
        body = post.flat_mean("body").detach()
        h_body = groups.flat(diag, "body")
        if objective.prior_structure == "layer":
            d2 = (body - prior.mean.to(body.dtype)) ** 2
            total, start = 0.0, 0
            for size in objective.block_sizes:
                block = slice(start, start + size)
                ones = torch.ones(size, dtype=torch.float64, device=body.device)
                total += _block_evidence_term(h_body[block], d2[block].sum(), ones, torch.zeros(()))
                start += size
        else:
            total = _block_evidence_term(
                h_body, prior.mahalanobis(body), prior.precision_diagonal(), prior.logdet_covariance()
            )
        if groups.head:
            head = post.flat_mean("head").detach()
            ones = torch.ones_like(head, dtype=torch.float64)
            total += _block_evidence_term(groups.flat(diag, "head"), (head.double() ** 2).sum(), ones, torch.zeros(()))
    return (nll_sum + total) / x.shape[0]


def selection_scores(
    objective: ScoredRun,
    x: Tensor,
    y: Tensor,
    *,
    train_loss: float,
    rules: Sequence[str] = SELECTION_RULES,
    samples: int = 10,
    transform: Transform = None,
    seed: int = 0,
) -> dict[str, float]:
    """Every asked-for rule's score of one finished run (nats per example, lower is better).

    Args:
        train_loss: the run's :attr:`TrainResult.final_loss` (the ``train-loss`` rule).
        rules: names from :data:`~optuna_deelbo.bayes.SELECTION_RULES`.
        samples: posterior draws for ``full-pass`` and ``elbo``.
    """
    unknown = [r for r in rules if r not in SELECTION_RULES]
    if unknown:
        raise ConfigError(f"unknown selection rule(s) {unknown}; choose from {SELECTION_RULES}")
    scores: dict[str, float] = {}
    if "train-loss" in rules:
        scores["train-loss"] = float(train_loss)
    if "full-pass" in rules or "elbo" in rules:
        nll = expected_nll(objective, x, y, samples=samples, transform=transform, seed=seed)
        with torch.no_grad():
            kl = float(objective.kl_terms()[0])
        n = objective.n_train
        if "full-pass" in rules:
            scores["full-pass"] = nll + kl / (objective.kappa * n)
        if "elbo" in rules:
            scores["elbo"] = nll + kl / n
    if "laplace" in rules:
        scores["laplace"] = laplace_neg_log_evidence(objective, x, y, transform=transform, seed=seed)
    return {r: scores[r] for r in rules}
