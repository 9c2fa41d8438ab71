"""The Bayesian layer (no Optuna here): priors, weight posterior, SWAG, the DE-ELBo step and objectives, selection."""

from __future__ import annotations

from optuna_deelbo.bayes._batchnorm import recalibrate_batchnorm
from optuna_deelbo.bayes._deelbo import BatchNormWarning, DEELBo
from optuna_deelbo.bayes._deelbo_recipe import (
    PRIOR_STRUCTURES,
    RECIPE_NAMES,
    RECIPES,
    SELECTION_RULES,
    SIGMA_MODES,
    SIGMA_OPTIMIZERS,
    WEIGHT_OPTIMIZERS,
    DEELBoRecipe,
)
from optuna_deelbo.bayes._objectives import DEELBoObjective, LossRecord, MAPObjective, Objective
from optuna_deelbo.bayes._posterior import (
    POSTERIOR_SIGMA_MODES,
    SIGMA_FLOOR,
    ParameterGroups,
    SigmaMode,
    WeightPosterior,
)
from optuna_deelbo.bayes._priors import PRIOR_NAMES, GaussianPrior, IsotropicGaussian, LowRankGaussian
from optuna_deelbo.bayes._selection import BatchNLL, expected_nll, laplace_neg_log_evidence, selection_scores
from optuna_deelbo.bayes._swag import SWAGCollector, SWAGMoments

__all__ = [
    "POSTERIOR_SIGMA_MODES",
    "PRIOR_NAMES",
    "PRIOR_STRUCTURES",
    "RECIPES",
    "RECIPE_NAMES",
    "SELECTION_RULES",
    "SIGMA_FLOOR",
    "SIGMA_MODES",
    "SIGMA_OPTIMIZERS",
    "WEIGHT_OPTIMIZERS",
    "BatchNLL",
    "BatchNormWarning",
    "DEELBo",
    "DEELBoObjective",
    "DEELBoRecipe",
    "GaussianPrior",
    "IsotropicGaussian",
    "LossRecord",
    "LowRankGaussian",
    "MAPObjective",
    "Objective",
    "ParameterGroups",
    "SWAGCollector",
    "SWAGMoments",
    "SigmaMode",
    "WeightPosterior",
    "expected_nll",
    "laplace_neg_log_evidence",
    "recalibrate_batchnorm",
    "selection_scores",
]
