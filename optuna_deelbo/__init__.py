"""optuna-deelbo: learn the regularization strength in-loop with the data-emphasized ELBo.

The names here are what a user needs (see the README and docs/ for a tour); the rest lives in the
subpackages, each with its own ``__all__``: :mod:`~optuna_deelbo.bayes` (priors, posterior, DE-ELBo),
:mod:`~optuna_deelbo.regularizers`, :mod:`~optuna_deelbo.train` (the loop), :mod:`~optuna_deelbo.data`,
:mod:`~optuna_deelbo.models`, :mod:`~optuna_deelbo.task`, :mod:`~optuna_deelbo.tuning` (Optuna: sampler,
strategies, studies, attrs), :mod:`~optuna_deelbo.report` and :mod:`~optuna_deelbo.integrations`
(Lightning, optunahub; imported on demand). The names deprecated in 0.3 are gone in 0.4 (CHANGELOG.md
names each one's new home).
"""

from __future__ import annotations

from optuna_deelbo import bayes, data, models, regularizers, report, task, train, tuning
from optuna_deelbo._errors import (
    CheckpointError,
    ConfigError,
    MissingDependency,
    StorageError,
    StudyExists,
    TrainingDiverged,
)
from optuna_deelbo.bayes import (
    RECIPES,
    BatchNormWarning,
    DEELBo,
    DEELBoRecipe,
    GaussianPrior,
    IsotropicGaussian,
    LowRankGaussian,
    expected_nll,
    recalibrate_batchnorm,
)
from optuna_deelbo.data import Split
from optuna_deelbo.task import BuiltinTask, TaskSpec, digits_task, split_cifar_task, text_task, wordnet_task
from optuna_deelbo.train import Minibatches, evaluate
from optuna_deelbo.tuning import (
    DEELBoSampler,
    PlaceholderWarning,
    best_params,
    compare,
    fit,
    learned_params,
    open_storage,
    report_learned,
)

__version__ = "0.3.0"

__all__ = [
    "RECIPES",
    "BatchNormWarning",
    "BuiltinTask",
    "CheckpointError",
    "ConfigError",
    "DEELBo",
    "DEELBoRecipe",
    "DEELBoSampler",
    "GaussianPrior",
    "IsotropicGaussian",
    "LowRankGaussian",
    "Minibatches",
    "MissingDependency",
    "PlaceholderWarning",
    "Split",
    "StorageError",
    "StudyExists",
    "TaskSpec",
    "TrainingDiverged",
    "bayes",
    "best_params",
    "compare",
    "data",
    "digits_task",
    "evaluate",
    "expected_nll",
    "fit",
    "learned_params",
    "models",
    "open_storage",
    "recalibrate_batchnorm",
    "regularizers",
    "report",
    "report_learned",
    "split_cifar_task",
    "task",
    "text_task",
    "train",
    "tuning",
    "wordnet_task",
]
