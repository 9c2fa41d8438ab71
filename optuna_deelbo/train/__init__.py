"""The training loop (:func:`train_model`) and what it needs: configs, minibatches, schedules, checkpoint states.

The loop's hooks, its state and the checkpoint byte format are
internals; where checkpoints are stored per Optuna trial is :class:`optuna_deelbo.tuning.Checkpointing`.
"""

from __future__ import annotations

from optuna_deelbo.train._batched import BatchingUnsupported, train_batched
from optuna_deelbo.train._checkpoint import CheckpointHook, CheckpointStore, Resume
from optuna_deelbo.train._divergence import DIVERGENCE_KINDS, DivergenceRule
from optuna_deelbo.train._early_stopping import EarlyStopping, continue_until, retrain_steps
from optuna_deelbo.train._halving import halving_cost, halving_rungs
from optuna_deelbo.train._minibatches import Minibatches
from optuna_deelbo.train._schedules import AdaptiveFeedback, StepSchedule, constant, pull_down, pull_up
from optuna_deelbo.train._training import Metrics, TrainConfig, TrainResult, evaluate, resolve_device, train_model

__all__ = [
    "DIVERGENCE_KINDS",
    "AdaptiveFeedback",
    "BatchingUnsupported",
    "CheckpointHook",
    "CheckpointStore",
    "DivergenceRule",
    "EarlyStopping",
    "Metrics",
    "Minibatches",
    "Resume",
    "StepSchedule",
    "TrainConfig",
    "TrainResult",
    "constant",
    "continue_until",
    "evaluate",
    "halving_cost",
    "halving_rungs",
    "pull_down",
    "pull_up",
    "resolve_device",
    "retrain_steps",
    "train_batched",
    "train_model",
]
