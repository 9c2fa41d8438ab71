"""optuna-deelbo: learn the regularization strength in-loop with the data-emphasized ELBo.

Public API only; see the README for a tour.
"""

from __future__ import annotations

from optuna_deelbo._errors import (
    CheckpointError,
    ConfigError,
    MissingDependency,
    StorageError,
    StudyExists,
    TrainingDiverged,
)
from optuna_deelbo.bayes._batchnorm import recalibrate_batchnorm
from optuna_deelbo.bayes._deelbo import BatchNormWarning, DEELBo
from optuna_deelbo.bayes._deelbo_recipe import (
    PRIOR_STRUCTURES,
    RECIPE_NAMES,
    RECIPES,
    SELECTION_RULES,
    SIGMA_MODES,
    DEELBoRecipe,
)
from optuna_deelbo.bayes._objectives import DEELBoObjective, LossRecord, MAPObjective, Objective
from optuna_deelbo.bayes._posterior import ParameterGroups, WeightPosterior
from optuna_deelbo.bayes._priors import PRIOR_NAMES, GaussianPrior, IsotropicGaussian, LowRankGaussian
from optuna_deelbo.bayes._selection import expected_nll, laplace_neg_log_evidence, selection_scores
from optuna_deelbo.bayes._swag import SWAGCollector, SWAGMoments
from optuna_deelbo.data._backbones import BACKBONE_NAMES, Backbone, CifarResNet, build_backbone, load_checkpoint
from optuna_deelbo.data._cifar import (
    CIFAR10_CLASSES,
    DeviceAugment,
    load_cifar10_jpeg,
    load_cifar10_torchvision,
    split_classes,
)
from optuna_deelbo.data._models import Pretrained, SmallCNN, pretrain, with_new_head
from optuna_deelbo.data._splits import Split, TransferData, digits_transfer, stratified_indices, train_val_split
from optuna_deelbo.data._task import TaskSpec
from optuna_deelbo.data._tasks import DATASET_NAMES, digits_task, split_cifar_task
from optuna_deelbo.regularizers._mixing import BatchMixing, cutmix, cutout, mixup, one_hot_targets, random_erasing
from optuna_deelbo.regularizers._penalties import PENALTY_NAMES, Penalty
from optuna_deelbo.regularizers._regularization import Regularization, suggest_regularization
from optuna_deelbo.regularizers._structural import set_head_dropout, set_stochastic_depth
from optuna_deelbo.train._divergence import DivergenceRule
from optuna_deelbo.train._early_stopping import EarlyStopping, continue_until, retrain_steps
from optuna_deelbo.train._minibatches import Minibatches
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule, constant, pull_down, pull_up
from optuna_deelbo.train._training import Metrics, TrainConfig, TrainResult, evaluate, resolve_device, train
from optuna_deelbo.tuning._fit import RetrainResult, fit, fit_deelbo, fit_map, retrain, score_deelbo_run
from optuna_deelbo.tuning._recipe import TaskRecipe
from optuna_deelbo.tuning._sampler import (
    LEARNED_ATTR_PREFIX,
    DEELBoSampler,
    PlaceholderWarning,
    best_params,
    learned_names,
    learned_params,
    without_learned,
)
from optuna_deelbo.tuning._storage import DEFAULT_STORAGE, open_storage
from optuna_deelbo.tuning._worker import finish_planned_study, plan_strategy_study, run_worker
from optuna_deelbo.tuning.strategies import (
    DEFAULT_STRATEGIES,
    STRATEGY_NAMES,
    Strategy,
    StrategyResult,
    get_strategy,
    task_objective,
)

__version__ = "0.1.0"

__all__ = [
    "BACKBONE_NAMES",
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DEFAULT_STORAGE",
    "DEFAULT_STRATEGIES",
    "LEARNED_ATTR_PREFIX",
    "PENALTY_NAMES",
    "PRIOR_NAMES",
    "PRIOR_STRUCTURES",
    "RECIPES",
    "RECIPE_NAMES",
    "SELECTION_RULES",
    "SIGMA_MODES",
    "STRATEGY_NAMES",
    "AdaptiveFeedback",
    "Backbone",
    "BatchMixing",
    "BatchNormWarning",
    "CheckpointError",
    "CifarResNet",
    "ConfigError",
    "DEELBo",
    "DEELBoObjective",
    "DEELBoRecipe",
    "DEELBoSampler",
    "DeviceAugment",
    "DivergenceRule",
    "EarlyStopping",
    "GaussianPrior",
    "IsotropicGaussian",
    "LossRecord",
    "LowRankGaussian",
    "MAPObjective",
    "Metrics",
    "Minibatches",
    "MissingDependency",
    "Objective",
    "ParameterGroups",
    "Penalty",
    "PlaceholderWarning",
    "Pretrained",
    "Regularization",
    "RetrainResult",
    "SWAGCollector",
    "SWAGMoments",
    "SmallCNN",
    "Split",
    "StepSchedule",
    "StorageError",
    "Strategy",
    "StrategyResult",
    "StudyExists",
    "TaskRecipe",
    "TaskSpec",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TransferData",
    "WeightPosterior",
    "best_params",
    "build_backbone",
    "constant",
    "continue_until",
    "cutmix",
    "cutout",
    "digits_task",
    "digits_transfer",
    "evaluate",
    "expected_nll",
    "finish_planned_study",
    "fit",
    "fit_deelbo",
    "fit_map",
    "get_strategy",
    "laplace_neg_log_evidence",
    "learned_names",
    "learned_params",
    "load_checkpoint",
    "load_cifar10_jpeg",
    "load_cifar10_torchvision",
    "mixup",
    "one_hot_targets",
    "open_storage",
    "plan_strategy_study",
    "pretrain",
    "pull_down",
    "pull_up",
    "random_erasing",
    "recalibrate_batchnorm",
    "resolve_device",
    "retrain",
    "retrain_steps",
    "run_worker",
    "score_deelbo_run",
    "selection_scores",
    "set_head_dropout",
    "set_stochastic_depth",
    "split_cifar_task",
    "split_classes",
    "stratified_indices",
    "suggest_regularization",
    "task_objective",
    "train",
    "train_val_split",
    "with_new_head",
    "without_learned",
]
