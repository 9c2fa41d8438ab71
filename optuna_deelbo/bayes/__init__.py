"""The Bayesian layer: priors, the weight posterior, SWAG, the DE-ELBo step and objectives, learning-rate selection."""

from __future__ import annotations

from optuna_deelbo.bayes._batchnorm import batchnorm_layers, recalibrate_batchnorm
from optuna_deelbo.bayes._deelbo import FAILURE_REASON_ATTR, LEARNED_ATTR_PREFIX, BatchNormWarning, DEELBo
from optuna_deelbo.bayes._deelbo_recipe import (
    PRIOR_STRUCTURES,
    RECIPE_NAMES,
    RECIPES,
    SELECTION_RULES,
    SIGMA_MODES,
    SIGMA_OPTIMIZERS,
    DEELBoRecipe,
    check_sigma_mode,
    resolve_recipe,
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
from optuna_deelbo.bayes._selection import expected_nll, laplace_neg_log_evidence, selection_scores
from optuna_deelbo.bayes._swag import SWAG_FORMAT, SWAG_FORMAT_VERSION, SWAGCollector, SWAGMoments

__all__ = [
    "FAILURE_REASON_ATTR",
    "LEARNED_ATTR_PREFIX",
    "POSTERIOR_SIGMA_MODES",
    "PRIOR_NAMES",
    "PRIOR_STRUCTURES",
    "RECIPES",
    "RECIPE_NAMES",
    "SELECTION_RULES",
    "SIGMA_FLOOR",
    "SIGMA_MODES",
    "SIGMA_OPTIMIZERS",
    "SWAG_FORMAT",
    "SWAG_FORMAT_VERSION",
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
    "batchnorm_layers",
    "check_sigma_mode",
    "expected_nll",
    "laplace_neg_log_evidence",
    "recalibrate_batchnorm",
    "resolve_recipe",
    "selection_scores",
]
