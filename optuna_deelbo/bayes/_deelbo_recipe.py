"""``DEELBoRecipe``: every choice of how a DE-ELBo run trains and how its learning rate is chosen.

One frozen dataclass, so a task, a benchmark row and a stored study name the same settings.
:data:`RECIPES` holds the named ones: ``"default"`` (this package's measured best, see the
README's ablation section), ``"v0.1"`` (the first release's: the default without BatchNorm
recalibration) and ``"paper"`` (the reference code's settings: sigma initialised
at 1e-4 and shared by body and head, gradient-norm clipping at 1.0, the full-pass DE-ELBo
selection criterion with 10 posterior samples).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_finite, positive_int
from optuna_deelbo.bayes._posterior import SIGMA_FLOOR, SigmaMode

__all__ = [
    "PRIOR_STRUCTURES",
    "PRODIGY_SIGMA",
    "RECIPES",
    "RECIPE_NAMES",
    "SELECTION_RULES",
    "SIGMA_MODES",
    "SIGMA_OPTIMIZERS",
    "WEIGHT_OPTIMIZERS",
    "DEELBoRecipe",
    "check_sigma_mode",
    "resolve_recipe",
]

#: How a finished DE-ELBo run is scored for the learning-rate choice (lower is better), see
#: :func:`optuna_deelbo.selection_scores`.
SELECTION_RULES: tuple[str, ...] = ("train-loss", "full-pass", "elbo", "laplace")
#: ``"sgd"``: sigma's ``rho`` in the weights' SGD (learning rate ``sigma_lr`` or the weights' own);
#: ``"adam"``: its own Adam with learning rate ``sigma_lr`` (scale-free, so every mode learns).
SIGMA_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: How the weights train (``TrainConfig.weight_optimizer``): SGD with momentum, or the learning-rate-free
#: Prodigy (Mishchenko & Defazio 2024; package ``prodigyopt``), whose ``lr`` is a multiplier of its learned step.
WEIGHT_OPTIMIZERS: tuple[str, ...] = ("sgd", "prodigy")
#: Why a DE-ELBo run with Prodigy needs ``sigma_optimizer="adam"`` (named in every refusal).
PRODIGY_SIGMA = (
    "Prodigy learns one step size for all it holds, sized for the weights: with rho in it, sigma grew to 0.9-2.5 "
    "instead of 0.05-0.1 on digits (training loss 0.7-1.7 instead of 0.1, accuracy down to 83.5 %; measured "
    "2026-12-07), a run that looks trained and is not the DE-ELBo's posterior"
)
#: The posterior std layouts the DE-ELBo trains: ``"scalar"`` (one sigma for the body, one for the
#: head) and ``"layer"`` (one per parameter tensor). ``"parameter"`` (one per weight) was removed:
#: under SGD it never left its initial value, with its own Adam it learned but stayed 4.5 / 1.6 /
#: 0.4 points below ``"scalar"`` on digits N = 50 / 100 / 200 (benchmarks/results/ablation.md).
SIGMA_MODES: tuple[str, ...] = ("scalar", "layer")
#: ``"shared"``: one body prior variance lambda; ``"layer"``: one per parameter tensor of the body.
PRIOR_STRUCTURES: tuple[str, ...] = ("shared", "layer")

SelectionRule = Literal["train-loss", "full-pass", "elbo", "laplace"]
SigmaOptimizer = Literal["sgd", "adam"]
WeightOptimizer = Literal["sgd", "prodigy"]
PriorStructure = Literal["shared", "layer"]


def check_sigma_mode(mode: object) -> None:
    """Refuse a sigma layout the DE-ELBo does not train (``"parameter"``: why, in :data:`SIGMA_MODES`)."""
    if mode == "parameter":
        raise ConfigError(
            "sigma_mode='parameter' (one posterior std per weight) is not offered for the DE-ELBo: with SGD it "
            "never left init_sigma, with its own Adam it stayed 0.4-4.5 points below 'scalar' on digits "
            "(benchmarks/results/ablation.md); use 'scalar' or 'layer'"
        )
    if mode not in SIGMA_MODES:
        raise ConfigError(f"unknown sigma_mode {mode!r}; choose one of {SIGMA_MODES}")


@dataclass(frozen=True)
class DEELBoRecipe:
    """How DE-ELBo trains and selects (MAP baselines ignore it).

    Attributes:
        init_sigma: initial posterior std (weight units), >= the posterior's floor (1e-12).
        sigma_mode: one of :data:`SIGMA_MODES` (``"parameter"`` is refused: see there).
        share_head_sigma: scalar mode only: one sigma for body and head (the reference code)
            instead of one each.
        clip_norm: max global gradient norm of DE-ELBo runs, or ``None`` (MAP keeps 10).
        sigma_optimizer: one of :data:`SIGMA_OPTIMIZERS`.
        sigma_lr: learning rate of ``rho`` (``adam``: required; ``sgd``: ``None`` = the weights' lr).
        weight_optimizer: one of :data:`WEIGHT_OPTIMIZERS`; ``"prodigy"`` needs ``sigma_optimizer="adam"``
            (:data:`PRODIGY_SIGMA`), and the learning rate is then Prodigy's multiplier (1.0).
        prior_structure: one of :data:`PRIOR_STRUCTURES` (``"layer"`` needs an isotropic prior).
        bn_recalibration: after training, recompute BatchNorm running statistics with the mean
            weights (what predicts) on the training set, through the training augmentation
            (:func:`~optuna_deelbo.tuning.trials.recalibrate_for_mean_weights`).
        selection: how the learning rate is chosen, one of :data:`SELECTION_RULES`.
        selection_samples: posterior samples per example for ``full-pass`` and ``elbo``.
    """

    init_sigma: float = 1e-3
    sigma_mode: SigmaMode = "scalar"
    share_head_sigma: bool = False
    clip_norm: float | None = 10.0
    sigma_optimizer: SigmaOptimizer = "sgd"
    sigma_lr: float | None = None
    weight_optimizer: WeightOptimizer = "sgd"
    prior_structure: PriorStructure = "shared"
    bn_recalibration: bool = True
    selection: SelectionRule = "train-loss"
    selection_samples: int = 10

    def __post_init__(self) -> None:
        if positive_finite(self.init_sigma, "init_sigma") < SIGMA_FLOOR:
            raise ConfigError(f"init_sigma must be >= the posterior std floor {SIGMA_FLOOR:g}, got {self.init_sigma!r}")
        check_sigma_mode(self.sigma_mode)
        _choice(self.sigma_optimizer, SIGMA_OPTIMIZERS, "sigma_optimizer")
        _choice(self.weight_optimizer, WEIGHT_OPTIMIZERS, "weight_optimizer")
        if self.weight_optimizer == "prodigy" and self.sigma_optimizer != "adam":
            raise ConfigError(
                f"weight_optimizer='prodigy' needs sigma_optimizer='adam' (e.g. sigma_lr=0.05): {PRODIGY_SIGMA}"
            )
        _choice(self.prior_structure, PRIOR_STRUCTURES, "prior_structure")
        _choice(self.selection, SELECTION_RULES, "selection rule")
        for name in ("share_head_sigma", "bn_recalibration"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.share_head_sigma and self.sigma_mode != "scalar":
            raise ConfigError(f"share_head_sigma needs sigma_mode='scalar', got {self.sigma_mode!r}")
        if self.clip_norm is not None:
            positive_finite(self.clip_norm, "clip_norm")
        if self.sigma_lr is not None:
            positive_finite(self.sigma_lr, "sigma_lr")
        elif self.sigma_optimizer == "adam":
            raise ConfigError("sigma_optimizer='adam' needs a sigma_lr (e.g. 0.01)")
        positive_int(self.selection_samples, "selection_samples")

    def replace(self, **changes: Any) -> DEELBoRecipe:
        """A copy with ``changes`` applied (and checked)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown recipe settings {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (:meth:`from_json` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> DEELBoRecipe:
        """Read :meth:`to_json`'s dict, or a name from :data:`RECIPES`."""
        if isinstance(data, str):
            return resolve_recipe(data)
        if not isinstance(data, dict):
            raise ConfigError(f"a DE-ELBo recipe must be a name or a JSON object, got {type(data).__name__}")
        return cls().replace(**data)


def _choice(value: object, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {choices}")


#: The named recipes. ``default`` is the measured best (README, "Which recipe choices matter").
RECIPES: dict[str, DEELBoRecipe] = {
    "default": DEELBoRecipe(),
    "v0.1": DEELBoRecipe(bn_recalibration=False),
    "paper": DEELBoRecipe(
        init_sigma=1e-4, share_head_sigma=True, clip_norm=1.0, selection="full-pass", bn_recalibration=False
    ),
}
RECIPE_NAMES: tuple[str, ...] = tuple(RECIPES)


def resolve_recipe(recipe: DEELBoRecipe | str) -> DEELBoRecipe:
    """A recipe object, or the named one from :data:`RECIPES`."""
    if isinstance(recipe, DEELBoRecipe):
        return recipe
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise ConfigError(f"unknown DE-ELBo recipe {recipe!r}; choose one of {RECIPE_NAMES} or pass a DEELBoRecipe")
