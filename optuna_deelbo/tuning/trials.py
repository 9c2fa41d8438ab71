"""The pieces one trial is made of, for a protocol of your own (benchmarks, ablations, a custom objective).

:func:`~optuna_deelbo.tuning.fit` puts them together; each is here to call alone: train one MAP or DE-ELBo
configuration (:func:`fit_map`, :func:`fit_deelbo`, all learning rates at once: :func:`fit_deelbo_batched`),
build or finish a DE-ELBo run (:func:`deelbo_objective`, :func:`finish_deelbo_training`,
:func:`recalibrate_for_mean_weights`), score it (:func:`score_deelbo_run`), retrain a MAP winner on all ``N``
(:func:`retrain`), and read which parameters a trial's sampler learns (:func:`learned_names`,
:func:`without_learned`).
"""

from __future__ import annotations

from optuna_deelbo.tuning._batched import fit_deelbo_batched
from optuna_deelbo.tuning._fit import (
    RetrainResult,
    deelbo_objective,
    finish_deelbo_training,
    fit_deelbo,
    fit_map,
    recalibrate_for_mean_weights,
    retrain,
    score_deelbo_run,
)
from optuna_deelbo.tuning._sampler import learned_names, without_learned

__all__ = [
    "RetrainResult",
    "deelbo_objective",
    "finish_deelbo_training",
    "fit_deelbo",
    "fit_deelbo_batched",
    "fit_map",
    "learned_names",
    "recalibrate_for_mean_weights",
    "retrain",
    "score_deelbo_run",
    "without_learned",
]
