"""The public surface stays put: ``optuna_deelbo.__all__`` and the CLI's subcommands and options.

A rename or removal fails here on purpose; add new names to the lists in the same change.
"""

from __future__ import annotations

import argparse

import optuna_deelbo as od
from optuna_deelbo.cli import build_parser

PUBLIC_NAMES = [
    "AdaptiveFeedback",
    "BACKBONE_NAMES",
    "Backbone",
    "BatchMixing",
    "CIFAR10_CLASSES",
    "CheckpointError",
    "CifarResNet",
    "ConfigError",
    "DATASET_NAMES",
    "DEELBo",
    "DEELBoObjective",
    "DEELBoRecipe",
    "DEELBoSampler",
    "DEFAULT_STORAGE",
    "DEFAULT_STRATEGIES",
    "DeviceAugment",
    "DivergenceRule",
    "EarlyStopping",
    "GaussianPrior",
    "IsotropicGaussian",
    "LEARNED_ATTR_PREFIX",
    "LossRecord",
    "LowRankGaussian",
    "MAPObjective",
    "Metrics",
    "Minibatches",
    "MissingDependency",
    "Objective",
    "PENALTY_NAMES",
    "PRIOR_NAMES",
    "PRIOR_STRUCTURES",
    "ParameterGroups",
    "Penalty",
    "PlaceholderWarning",
    "Pretrained",
    "RECIPES",
    "RECIPE_NAMES",
    "Regularization",
    "RetrainResult",
    "SELECTION_RULES",
    "SIGMA_MODES",
    "STRATEGY_NAMES",
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

CLI_OPTIONS = {
    "compare": [
        "--artifacts",
        "--backbone",
        "--batch-size",
        "--cache-dir",
        "--checkpoint-every",
        "--compile",
        "--data-dir",
        "--dataset",
        "--device",
        "--n-train",
        "--no-progress",
        "--overwrite",
        "--plan-only",
        "--pretrain-steps",
        "--prior",
        "--recipe",
        "--report",
        "--resume",
        "--seed",
        "--steps",
        "--storage",
        "--strategies",
        "--tpe-trials",
    ],
    "report": [
        "--dashboard",
        "--out",
        "--storage",
    ],
    "worker": [
        "--artifacts",
        "--device",
        "--grace-period",
        "--heartbeat-interval",
        "--max-retry",
        "--storage",
        "--study",
        "--threads",
    ],
    "finish": [
        "--device",
        "--storage",
        "--study",
    ],
}


def test_public_names_are_pinned() -> None:
    assert sorted(od.__all__) == PUBLIC_NAMES
    assert all(hasattr(od, name) for name in od.__all__)


def test_cli_subcommands_and_options_are_pinned() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {
        command: sorted(o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help"))
        for command, parser in sub.choices.items()
    }
    assert found == CLI_OPTIONS
