"""``TaskSpec``: everything a strategy needs to train one configuration, shared by all of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import FLOAT32_MAX, check_seed, fraction, positive_finite, positive_int
from optuna_deelbo.bayes._deelbo_recipe import DEELBoRecipe, resolve_recipe
from optuna_deelbo.bayes._posterior import ParameterGroups
from optuna_deelbo.bayes._priors import PRIOR_NAMES, GaussianPrior, body_prior_for
from optuna_deelbo.data._splits import Split, stratified_indices, train_val_split
from optuna_deelbo.regularizers._mixing import BatchMixing
from optuna_deelbo.regularizers._regularization import Regularization
from optuna_deelbo.train._checkpoint import CheckpointStore
from optuna_deelbo.train._divergence import DivergenceRule
from optuna_deelbo.train._training import TrainConfig, resolve_device

__all__ = ["TaskSpec"]


def _recipe_signature(recipe: DEELBoRecipe) -> dict[str, Any]:
    """The recipe's settings, without ``weight_optimizer`` at its default (studies planned before it keep theirs)."""
    settings = dataclasses.asdict(recipe)
    if settings["weight_optimizer"] == "sgd":
        del settings["weight_optimizer"]
    return settings


@dataclass
class TaskSpec:
    """A fine-tuning problem: model factory, data, prior family and training budget.

    Attributes:
        name: short identifier, used in study names.
        model_factory: returns a fresh model whose body holds the pretrained weights and whose
            head (parameters starting with one of ``head_prefixes``) is newly initialised.
            Called under ``torch.manual_seed(seed)``.
        train: the ``N`` training examples (all of them; MAP baselines split 80/20 inside): a
            :class:`Split`, or a ``Dataset`` / ``DataLoader`` / ``(x, y)`` pair read into one
            (:meth:`Split.from_data`).
        test: held-out examples for reporting only (never used for selection), or ``None``;
            the same forms as ``train``.
        head_prefixes: parameter-name prefixes of the head (own prior variance ``tau``).
        prior: ``"l2-zero"`` (mean 0), ``"l2-sp"`` (mean = pretrained body) or ``"ptyl"``.
        prior_mean: flat body prior mean ``(D,)``; default: zeros for ``l2-zero``, the factory
            model's body weights otherwise.
        prior_covariance: ``(diagonal (D,), factor (D, K))`` of ``Sigma`` for ``ptyl``.
        steps: SGD steps per configuration (the same for every strategy).
        batch_size: examples per step.
        kappa: DE-ELBo likelihood emphasis; ``None`` = ``D / N``.
        recipe: how DE-ELBo runs train and choose their learning rate: a
            :class:`~optuna_deelbo.bayes.DEELBoRecipe` or a name from ``RECIPES``
            (``"default"``, ``"paper"``); stored as the recipe object. MAP runs ignore it.
        val_fraction: held-out fraction for MAP tuning (paper: 0.2).
        seed: seeds the head initialisation, minibatch order, posterior samples and splits.
        device: ``None`` = CUDA when present, else CPU.
        progress: tqdm bars during training.
        channels_last: see :class:`~optuna_deelbo.train.TrainConfig` (``None`` = NHWC on CUDA only).
        compile: see :class:`~optuna_deelbo.train.TrainConfig`.
        regularization: classic regularizers for every run (penalties, dropout, stochastic
            depth, mixing, warm restarts, early stopping); all off by default.
        train_transform: applied on the device to every training minibatch (e.g. uint8 images
            -> normalised, randomly cropped and flipped floats); ``None`` = identity.
        eval_transform: applied to validation / test batches (e.g. normalisation only).
        checkpointing: where :func:`~optuna_deelbo.tuning.fit` checkpoints each trial's training
            and how often (a retried trial resumes from its predecessor's newest checkpoint);
            ``None`` (default) = no checkpoints. Set by ``optuna-deelbo worker``.
        divergence: when a training run counts as diverged (non-finite values, exploding sigma,
            runaway NLL); a diverged :func:`~optuna_deelbo.tuning.fit` trial is pruned with the
            reason in its ``failure:reason`` user attr. See :class:`DivergenceRule`.

    The factory's model is run once on two training examples (after ``eval_transform``, else
    ``train_transform``) when the spec is built, so inputs of the wrong shape or dtype and
    labels beyond the model's outputs fail here with a :class:`ConfigError`, as do NaN or infinite
    inputs and a ``prior_covariance`` whose shapes do not fit the model's body.
    """

    name: str
    model_factory: Callable[[], nn.Module]
    train: Split
    test: Split | None = None
    head_prefixes: tuple[str, ...] = ("head.",)
    prior: str = "l2-sp"
    prior_mean: Tensor | None = None
    prior_covariance: tuple[Tensor, Tensor] | None = None
    steps: int = 300
    batch_size: int = 64
    kappa: float | None = None
    recipe: DEELBoRecipe | str = "default"
    val_fraction: float = 0.2
    seed: int = 0
    device: str | None = None
    progress: bool = True
    channels_last: bool | None = None
    compile: bool = False
    regularization: Regularization = field(default_factory=Regularization)
    train_transform: Callable[[Tensor], Tensor] | None = None
    eval_transform: Callable[[Tensor], Tensor] | None = None
    checkpointing: CheckpointStore | None = None
    divergence: DivergenceRule = field(default_factory=DivergenceRule)
    _body_dim: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        for what in ("train", "test"):
            split = getattr(self, what)
            if split is None and what == "test":
                continue
            if not isinstance(split, Split):
                split = Split.from_data(split, what=what)
                setattr(self, what, split)
            if split.x.is_floating_point() and not bool(torch.isfinite(split.x).all()):
                bad = int((~torch.isfinite(split.x)).sum())
                raise ConfigError(f"{what} inputs x hold {bad} NaN or infinite value(s); clean or impute them first")
        if len(self.train) == 0:
            raise ConfigError("the training set is empty (N = 0)")
        if self.prior not in PRIOR_NAMES:
            raise ConfigError(f"unknown prior {self.prior!r}; choose one of {PRIOR_NAMES}")
        self.recipe = resolve_recipe(self.recipe)
        if self.kappa is not None:
            positive_finite(self.kappa, "kappa", high=FLOAT32_MAX)
        fraction(self.val_fraction, "val_fraction")
        check_seed(self.seed, "seed")
        if isinstance(self.head_prefixes, str):
            self.head_prefixes = (self.head_prefixes,)
        if self.prior == "ptyl" and self.prior_covariance is None:
            raise ConfigError("the ptyl prior needs prior_covariance=(diagonal, factor), e.g. from SWAG")
        self.train_config(lr=1.0)  # validates steps / batch_size / device early
        resolve_device(self.device)
        model = self.build_model()
        groups = self.groups(model)
        self._body_dim = groups.numel(model, "body")
        self._check_model_runs(model)
        if self.prior_mean is not None and (self.prior_mean.ndim != 1 or self.prior_mean.shape[0] != self._body_dim):
            raise ConfigError(
                f"prior mean has shape {tuple(self.prior_mean.shape)} but the model body has "
                f"{self._body_dim} weights (head prefixes {self.head_prefixes})"
            )
        if self.prior == "ptyl":
            self._check_covariance(model)
            if self.recipe.prior_structure == "layer":
                raise ConfigError("prior_structure='layer' needs an isotropic prior (l2-zero, l2-sp), not ptyl")

    def _check_covariance(self, model: nn.Module) -> None:
        """``prior_covariance`` must be ``(diagonal (D,), factor (D, K))`` for the model's ``D`` body weights."""
        cov, dim = self.prior_covariance, self._body_dim
        if not (isinstance(cov, (tuple, list)) and len(cov) == 2 and all(isinstance(t, Tensor) for t in cov)):
            raise ConfigError(f"prior_covariance must be a pair of tensors (diagonal, factor), got {cov!r:.80}")
        diagonal, factor = cov
        if tuple(diagonal.shape) != (dim,) or factor.ndim != 2 or factor.shape[0] != dim:
            raise ConfigError(
                f"prior_covariance has shapes {tuple(diagonal.shape)} and {tuple(factor.shape)} but the model "
                f"body has {dim} weights: expected ({dim},) and ({dim}, K)"
            )
        self.body_prior(model)  # finiteness and positivity, with LowRankGaussian's messages

    @torch.no_grad()
    def _check_model_runs(self, model: nn.Module) -> None:
        """Run ``model`` (eval mode) on two training examples; a mismatch raises :class:`ConfigError` here."""
        device = next(model.parameters()).device
        xb = self.train.x[:2].to(device)
        transform = self.eval_transform or self.train_transform
        was_training = model.training
        model.eval()
        try:
            logits = model(transform(xb) if transform is not None else xb)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            hint = "; integer inputs need a train_transform that makes floats" if not xb.is_floating_point() else ""
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"the model cannot run on the training inputs (x {self.train.x.dtype} of shape "
                f"{tuple(self.train.x.shape)}{hint}): {reason}"
            ) from exc
        finally:
            model.train(was_training)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != xb.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ConfigError(
                f"the model must return logits of shape (batch, classes); for {xb.shape[0]} inputs it gave {shape}"
            )
        if logits.shape[1] < self.n_classes:
            raise ConfigError(
                f"the labels go up to {self.n_classes - 1} ({self.n_classes} classes) "
                f"but the model outputs {logits.shape[1]} logits"
            )

    @property
    def n_train(self) -> int:
        """``N``, the number of training examples."""
        return len(self.train)

    def build_model(self) -> nn.Module:
        """A fresh model from the factory (seeded), on the task's device."""
        torch.manual_seed(self.seed)
        model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model_factory must return an nn.Module, got {type(model).__name__}")
        self.regularization.apply_to_model(model, self.head_prefixes)
        return model.to(resolve_device(self.device))

    @property
    def n_classes(self) -> int:
        """Number of classes, ``max(train labels) + 1``."""
        return int(self.train.y.max()) + 1

    def mixing(self) -> BatchMixing | None:
        """The batch augmentation of :attr:`regularization` (soft targets), or ``None``."""
        return self.regularization.mixing(self.n_classes)

    def groups(self, model: nn.Module) -> ParameterGroups:
        """Body/head split of ``model`` by :attr:`head_prefixes`."""
        return ParameterGroups.split(model, self.head_prefixes)

    def body_prior(self, model: nn.Module) -> GaussianPrior:
        """The body prior of :attr:`prior`'s family for a model built by :meth:`build_model`."""
        body = self.groups(model).flat(dict(model.named_parameters()), "body").detach()
        return body_prior_for(self.prior, body, mean=self.prior_mean, covariance=self.prior_covariance)

    def signature(self) -> dict[str, Any]:
        """What a study of this task must have been planned with to be resumed (JSON-safe).

        Name (data set, N, seed), prior, budget, the DE-ELBo recipe, kappa, the validation
        fraction and the classic regularizers; not the device or the progress bar.
        """
        return {
            "name": self.name,
            "N": self.n_train,
            "seed": self.seed,
            "prior": self.prior,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "kappa": self.kappa,
            "val_fraction": self.val_fraction,
            "deelbo_recipe": _recipe_signature(self.deelbo_recipe),
            "regularization": repr(self.regularization),
        }

    @property
    def deelbo_recipe(self) -> DEELBoRecipe:
        """:attr:`recipe` as the resolved object (typed)."""
        assert isinstance(self.recipe, DEELBoRecipe)  # __post_init__
        return self.recipe

    def deelbo_train_config(self, lr: float) -> TrainConfig:
        """The loop settings of a DE-ELBo run: :meth:`train_config` with the recipe's clipping and sigma optimiser."""
        recipe = self.deelbo_recipe
        return dataclasses.replace(
            self.train_config(lr),
            clip_norm=recipe.clip_norm,
            sigma_optimizer=recipe.sigma_optimizer,
            sigma_lr=recipe.sigma_lr,
            weight_optimizer=recipe.weight_optimizer,
        )

    def train_config(self, lr: float, steps: int | None = None) -> TrainConfig:
        """The loop settings for one configuration with learning rate ``lr``."""
        return TrainConfig(
            lr=lr,
            steps=self.steps if steps is None else steps,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
            seed=self.seed,
            channels_last=self.channels_last,
            compile=self.compile,
            restart_period=self.regularization.restart_period,
            divergence=self.divergence,
        )

    def with_test_subset(self, n: int, seed: int = 12345) -> TaskSpec:
        """A copy tested on a fixed stratified subset of ``n`` of its test examples (all of them if fewer).

        For quicker reporting-only evaluations (benchmarks); the same ``seed`` gives the same subset.
        """
        if self.test is None:
            raise ConfigError("the task has no test set to take a subset of")
        positive_int(n, "test subset size")
        if n >= len(self.test):
            return self
        keep = stratified_indices(self.test.y, n, seed=seed)
        return dataclasses.replace(self, test=Split(self.test.x[keep], self.test.y[keep]))

    @cached_property
    def train_val(self) -> tuple[Split, Split]:
        """The stratified ``(1 - val_fraction, val_fraction)`` split of :attr:`train` (MAP tuning)."""
        return train_val_split(self.train, self.val_fraction, seed=self.seed)
