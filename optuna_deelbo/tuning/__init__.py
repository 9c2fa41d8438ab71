"""The Optuna side: DEELBoSampler, fit, the strategies, the study lifecycle, the attr schema, storages.

* :func:`fit` trains one configuration in an objective (MAP or DE-ELBo, by the study's sampler);
  :func:`report_learned` is the own-loop counterpart for :class:`~optuna_deelbo.DEELBo`; :func:`best_params` /
  :func:`learned_params` read the learned values back.
* :mod:`~optuna_deelbo.tuning.strategies`: what each search runs; :func:`compare` / :func:`run_strategy` run
  them as studies in a storage (:func:`open_storage`); a search whose every trial failed or was pruned raises
  :class:`SearchFailed`.
* :mod:`~optuna_deelbo.tuning.attrs`: every trial / study user-attr key.
* :mod:`~optuna_deelbo.tuning.trials`: the pieces of one trial (``fit_deelbo``, ``fit_map``, scores, retraining).
* :mod:`~optuna_deelbo.tuning.workers`: one study over many processes (plan, workers, finish, gRPC proxy).
"""

from __future__ import annotations

from optuna_deelbo._errors import SearchFailed
from optuna_deelbo.tuning import attrs, strategies, trials, workers
from optuna_deelbo.tuning._checkpoints import Checkpointing
from optuna_deelbo.tuning._fit import fit
from optuna_deelbo.tuning._sampler import DEELBoSampler, PlaceholderWarning, report_learned
from optuna_deelbo.tuning._storage import DEFAULT_STORAGE, open_storage
from optuna_deelbo.tuning._study import StrategyResult, compare, run_strategy, study_name_for
from optuna_deelbo.tuning.attrs import best_params, learned_params
from optuna_deelbo.tuning.strategies import get_strategy
from optuna_deelbo.tuning.strategies.tpe import suggest_regularization

__all__ = [
    "DEFAULT_STORAGE",
    "Checkpointing",
    "DEELBoSampler",
    "PlaceholderWarning",
    "SearchFailed",
    "StrategyResult",
    "attrs",
    "best_params",
    "compare",
    "fit",
    "get_strategy",
    "learned_params",
    "open_storage",
    "report_learned",
    "run_strategy",
    "strategies",
    "study_name_for",
    "suggest_regularization",
    "trials",
    "workers",
]
