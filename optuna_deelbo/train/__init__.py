"""The training loop and its hooks: checkpoints, divergence checks, early stopping, weight-decay schedules."""

from __future__ import annotations

from optuna_deelbo.train._checkpoint import (
    ATTR_ARTIFACT,
    ATTR_RESUME_ERROR,
    ATTR_RESUMED_ARTIFACT,
    ATTR_RESUMED_STEP,
    ATTR_RESUMED_TRIAL,
    ATTR_STEP,
    CHECKPOINT_FORMAT,
    CheckpointHook,
    Resume,
    check_fingerprint,
    copy_tensors,
    default_artifacts_dir,
    from_bytes,
    rng_state,
    set_rng_state,
    to_bytes,
)
from optuna_deelbo.train._divergence import DIVERGENCE_KINDS, DivergenceMonitor, DivergenceRule
from optuna_deelbo.train._early_stopping import ContinueResult, EarlyStopping, continue_until, retrain_steps
from optuna_deelbo.train._hooks import (
    Checkpointing,
    DivergenceCheck,
    Evaluation,
    ProgressBar,
    StepCallback,
    TrainHook,
    WeightDecayControl,
)
from optuna_deelbo.train._minibatches import Minibatches
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule, constant, pull_down, pull_up
from optuna_deelbo.train._state import LoopState
from optuna_deelbo.train._training import (
    Metrics,
    TrainConfig,
    TrainResult,
    evaluate,
    resolve_device,
    run_fingerprint,
    train,
)

__all__ = [
    "ATTR_ARTIFACT",
    "ATTR_RESUMED_ARTIFACT",
    "ATTR_RESUMED_STEP",
    "ATTR_RESUMED_TRIAL",
    "ATTR_RESUME_ERROR",
    "ATTR_STEP",
    "CHECKPOINT_FORMAT",
    "DIVERGENCE_KINDS",
    "AdaptiveFeedback",
    "CheckpointHook",
    "Checkpointing",
    "ContinueResult",
    "DivergenceCheck",
    "DivergenceMonitor",
    "DivergenceRule",
    "EarlyStopping",
    "Evaluation",
    "LoopState",
    "Metrics",
    "Minibatches",
    "ProgressBar",
    "Resume",
    "StepCallback",
    "StepSchedule",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "WeightDecayControl",
    "check_fingerprint",
    "constant",
    "continue_until",
    "copy_tensors",
    "default_artifacts_dir",
    "evaluate",
    "from_bytes",
    "pull_down",
    "pull_up",
    "resolve_device",
    "retrain_steps",
    "rng_state",
    "run_fingerprint",
    "set_rng_state",
    "to_bytes",
    "train",
]
