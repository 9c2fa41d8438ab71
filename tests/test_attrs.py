"""tuning/attrs.py: the one user-attr schema; no other module spells a key, and the readers give learned values."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

import optuna_deelbo as od
from optuna_deelbo.tuning import attrs as A

PACKAGE = Path(od.__file__).resolve().parent
KEYS = {name: getattr(A, name) for name in A.__all__ if name.isupper() and isinstance(getattr(A, name), str)}
#: Keys that are also ordinary words (a prefix, "mode", "task", ...): only the ``prefix:name`` keys are grepped.
_GREPPED = {name: key for name, key in KEYS.items() if ":" in key and not key.endswith(":")}


def test_keys_are_distinct() -> None:
    assert len(set(KEYS.values())) == len(KEYS), KEYS


def test_the_keys_keep_their_0_2_spelling() -> None:
    """Stored studies are read by later versions: a key may not change its text."""
    assert (A.TEST_ACCURACY, A.LEARNED_WEIGHT_DECAY, A.BUILTIN_TASK, A.PLANNED, A.PLAN) == (
        "test:accuracy",
        "learned:weight_decay",
        "task_recipe",
        "planned_trials",
        "plan",
    )


@pytest.mark.parametrize("module", sorted(p for p in PACKAGE.rglob("*.py") if p.name != "attrs.py"), ids=str)
def test_no_other_module_spells_a_key(module: Path) -> None:
    literals = {n.value for n in ast.walk(ast.parse(module.read_text())) if isinstance(n, ast.Constant)}
    spelled = sorted(key for key in _GREPPED.values() if key in literals)
    assert not spelled, f"{module.relative_to(PACKAGE)}: use optuna_deelbo.tuning.attrs for {spelled}"


def test_prefixed_learned_names_the_learned_values() -> None:
    values = {"mode": "deelbo", "kappa": 3.0, "lambda": 0.1, "weight_decay": 2.0, "sigma": 0.01, "tau": 0.5}
    assert A.prefixed_learned(values) == {
        "mode": "deelbo",
        "kappa": 3.0,
        A.LEARNED_LAMBDA: 0.1,
        A.LEARNED_WEIGHT_DECAY: 2.0,
        A.LEARNED_SIGMA: 0.01,
        A.LEARNED_TAU: 0.5,
    }


def test_learned_params_and_best_params_replace_the_placeholder() -> None:
    study = optuna.create_study()
    for wd, value in ((7.0, 1.0), (9.0, 0.5)):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True)
        trial.set_user_attr(A.learned_key("weight_decay"), wd)
        trial.set_user_attr(A.LEARNED_TRACE, [[1, 0.1, 0.2, 0.3]])
        study.tell(trial, value)
    best = study.best_trial
    assert A.best_params(study) == {"lr": best.params["lr"], "weight_decay": 9.0}
    assert A.learned_floats(best) == {A.LEARNED_WEIGHT_DECAY: 9.0}  # not the trace
    assert A.select_key("train-loss") == "select:train-loss"


def test_series_are_system_attrs_and_a_03_user_attr_still_reads() -> None:
    """The long series go to system attrs (the dashboard prints user attrs on one line); 0.3 studies still read."""
    study = optuna.create_study()
    trial = study.ask()
    A.set_trial_attrs(trial, {A.LEARNED_TRACE: [[1, 0.1, 0.2, 0.3]], A.LEARNED_LAMBDA: 0.1})
    study.tell(trial, 1.0)
    old = study.ask()
    old.set_user_attr(A.LAMBDA_TRAJECTORY, [[0, 1e-4]])  # as 0.3 wrote it
    study.tell(old, 2.0)
    new, legacy = study.trials
    assert A.LEARNED_TRACE not in new.user_attrs and new.system_attrs[A.LEARNED_TRACE] == [[1, 0.1, 0.2, 0.3]]
    assert new.user_attrs == {A.LEARNED_LAMBDA: 0.1}
    assert A.series(new, A.LEARNED_TRACE) == [[1, 0.1, 0.2, 0.3]]
    assert A.series(legacy, A.LAMBDA_TRAJECTORY) == [[0, 1e-4]] and A.series(legacy, A.LEARNED_TRACE) is None
    with pytest.raises(KeyError, match="not a series attr"):
        A.series(new, A.LEARNED_LAMBDA)
    fixed = optuna.trial.FixedTrial({})  # no storage behind it: every attr a user attr
    A.set_trial_attrs(fixed, {A.LEARNED_TRACE: [[1, 0.1, 0.2, 0.3]]})
    assert fixed.user_attrs == {A.LEARNED_TRACE: [[1, 0.1, 0.2, 0.3]]}
