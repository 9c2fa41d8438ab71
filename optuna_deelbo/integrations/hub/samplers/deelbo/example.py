"""DE-ELBo under optunahub: search the learning rate only; the weight decay is learned in-loop.

Run it as ``python example.py`` (loads ``samplers/deelbo`` from the optunahub registry); the
test suite calls :func:`run` with the module loaded by ``optunahub.load_local_module``.
"""

from __future__ import annotations

from types import ModuleType

import optuna
import optunahub

import optuna_deelbo as od


def run(module: ModuleType, n_trials: int = 4) -> optuna.Study:
    """A study on the embedded digits task with ``module.DEELBoSampler`` over a learning-rate grid."""
    task, _ = od.digits_task(n_train=100)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)  # learned, not searched
        return module.fit(trial, task, lr=lr, weight_decay=weight_decay)

    sampler = module.DEELBoSampler(optuna.samplers.GridSampler({"lr": [1e-1, 3e-2, 1e-2, 3e-3]}))
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study


if __name__ == "__main__":
    study = run(optunahub.load_module("samplers/deelbo"))
    best = od.best_params(study)  # study.best_params holds the placeholder weight decay; this the learned one
    print(f"lr {best['lr']}: learned weight decay {best['weight_decay']:.3g}")
