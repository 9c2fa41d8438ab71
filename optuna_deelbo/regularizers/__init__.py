"""Classic regularizers (no Optuna here): penalties (L1, L2, L1/2), batch mixing, structural noise, combined."""

from __future__ import annotations

from optuna_deelbo.regularizers._mixing import (
    BatchMixing,
    cutmix,
    cutout,
    mixup,
    one_hot_targets,
    random_erasing,
    sample_beta,
    soft_cross_entropy,
)
from optuna_deelbo.regularizers._penalties import PENALTY_NAMES, Penalty
from optuna_deelbo.regularizers._regularization import RETRAIN_RULES, SEARCHABLE, Regularization
from optuna_deelbo.regularizers._structural import (
    check_probability,
    residual_blocks,
    set_head_dropout,
    set_stochastic_depth,
)

__all__ = [
    "PENALTY_NAMES",
    "RETRAIN_RULES",
    "SEARCHABLE",
    "BatchMixing",
    "Penalty",
    "Regularization",
    "check_probability",
    "cutmix",
    "cutout",
    "mixup",
    "one_hot_targets",
    "random_erasing",
    "residual_blocks",
    "sample_beta",
    "set_head_dropout",
    "set_stochastic_depth",
    "soft_cross_entropy",
]
