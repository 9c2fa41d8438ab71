"""The one door to Optuna below the tuning layer: what the training loop needs of a trial.

The loop (:func:`optuna_deelbo.train.train_model`) reports intermediate values to an Optuna trial and
stops when its pruner says so; that is all it knows of Optuna, and it knows it through here
(tests/test_layout.py keeps every other module below ``tuning/`` free of Optuna imports).
"""

from __future__ import annotations

from typing import TypeAlias

import optuna

__all__ = ["Trial", "TrialPruned", "report_or_prune"]

#: The trial type the loop accepts (a live trial of ``study.optimize``).
Trial: TypeAlias = optuna.trial.Trial
#: What :func:`report_or_prune` raises (a batched run ends only the pruned member).
TrialPruned: TypeAlias = optuna.TrialPruned


def report_or_prune(trial: Trial, value: float, step: int) -> None:
    """Report ``value`` at ``step``; raise ``optuna.TrialPruned`` if the trial's pruner stops it."""
    trial.report(value, step)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with intermediate value {value:.4g}")
