"""Tests for :mod:`optuna_deelbo.tuning._sampler`: the ``DEELBoSampler`` wrapper contract and what
:func:`optuna_deelbo.tuning._fit` does under it.

The contract tests use spy base samplers (real ``TPESampler`` / ``RandomSampler`` subclasses
that log every call) and cheap arithmetic objectives. The end-to-end tests run the shared user
objective on a tiny digits task (50 examples, 20 steps), trained once per module.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FixedTrial, FrozenTrial, Trial, TrialState

from optuna_deelbo import ConfigError
from optuna_deelbo.task._builtin import digits_task
from optuna_deelbo.task._spec import TaskSpec
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._sampler import DEELBoSampler, learned_names, without_learned
from optuna_deelbo.tuning.attrs import LEARNED_PREFIX
from optuna_deelbo.tuning.strategies import LEARNING_RATES, task_objective
from optuna_deelbo.tuning.strategies._base import LR_RANGE, WEIGHT_DECAY_RANGE

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: The cheap objective's search space; every low / first choice is distinctive on purpose.
WD_LOW, WD_HIGH = 1e-6, 1e-2
OPTIMIZERS = ("sgd", "adam", "rmsprop")
LAYERS_LOW, LAYERS_HIGH = 2, 5
ALL_NAMES = frozenset({"lr", "weight_decay", "optimizer", "layers"})
PLACEHOLDERS: dict[str, Any] = {"weight_decay": WD_LOW, "optimizer": OPTIMIZERS[0], "layers": LAYERS_LOW}
LR_GRID = list(LEARNING_RATES)

# Most objectives here are toys that never report learned values: the placeholder warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::optuna_deelbo.PlaceholderWarning")


# --------------------------------------------------------------------------------------------
# Spy samplers
# --------------------------------------------------------------------------------------------


class _SpyMixin(BaseSampler):
    """Logs every call that reaches the sampler, then delegates to the real implementation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.independent: list[str] = []
        self.relative: list[dict[str, BaseDistribution]] = []
        self.inferred: list[dict[str, BaseDistribution]] = []
        self.before: list[int] = []
        self.after: list[tuple[int, TrialState]] = []
        self.reseeds = 0

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = super().infer_relative_search_space(study, trial)
        self.inferred.append(dict(space))
        return space

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self.relative.append(dict(search_space))
        return super().sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        self.independent.append(param_name)
        return super().sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.before.append(trial.number)
        super().before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.after.append((trial.number, state))
        super().after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.reseeds += 1
        super().reseed_rng()

    def names_seen(self) -> set[str]:
        """Every parameter name that reached this sampler for sampling (independent or relative)."""
        return set(self.independent).union(*(space.keys() for space in self.relative))


class SpyTPE(_SpyMixin, TPESampler):
    """Multivariate TPE (so the relative path is exercised) that logs its calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed, multivariate=True, n_startup_trials=5)


class SpyRandom(_SpyMixin, RandomSampler):
    """``RandomSampler`` that logs its calls (independent sampling only)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed)


SpyFactory = Callable[[], _SpyMixin]
SPIES: dict[str, SpyFactory] = {"tpe": SpyTPE, "random": SpyRandom}


def cheap_objective(trial: Trial) -> float:
    """Suggests a log float, a learned-by-default float, a categorical and an int; no training."""
    lr = trial.suggest_float("lr", *LR_RANGE, log=True)
    wd = trial.suggest_float("weight_decay", WD_LOW, WD_HIGH, log=True)
    opt = trial.suggest_categorical("optimizer", OPTIMIZERS)
    layers = trial.suggest_int("layers", LAYERS_LOW, LAYERS_HIGH)
    return (math.log10(lr) + 2.5) ** 2 + wd + OPTIMIZERS.index(opt) + 0.1 * layers


def lr_only_objective(trial: Trial) -> float:
    lr = trial.suggest_float("lr", *LR_RANGE, log=True)
    trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
    return lr


# --------------------------------------------------------------------------------------------
# 1. The base sampler never sees a learned name
# --------------------------------------------------------------------------------------------


def test_unwrapped_spy_sees_every_name() -> None:
    """Control for the tests below: the spy does record weight_decay when nothing hides it."""
    spy = SpyTPE()
    optuna.create_study(sampler=spy).optimize(cheap_objective, n_trials=8)
    assert spy.names_seen() == ALL_NAMES
    assert any("weight_decay" in space for space in spy.relative)


@pytest.mark.parametrize("spy_kind", sorted(SPIES))
@pytest.mark.parametrize(
    "learned", [("weight_decay",), ("weight_decay", "optimizer", "layers")], ids=["wd", "wd+cat+int"]
)
def test_learned_names_never_reach_base_sampler(spy_kind: str, learned: tuple[str, ...]) -> None:
    spy = SPIES[spy_kind]()
    sampler = DEELBoSampler(spy, learned=learned)
    study = optuna.create_study(sampler=sampler)
    study.optimize(cheap_objective, n_trials=15)

    assert len(study.trials) == 15
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    others = ALL_NAMES - set(learned)
    # Neither path of the base sampler ever saw a learned name; the others did reach it.
    assert not set(learned) & set(spy.independent)
    for space in spy.relative:
        assert not set(learned) & set(space), space
    assert spy.names_seen() == others
    # Every trial still suggested every name; learned ones hold the placeholder.
    for trial in study.trials:
        assert set(trial.params) == ALL_NAMES
        for name in learned:
            assert trial.params[name] == PLACEHOLDERS[name], (name, trial.params)
    # Non-learned names were really sampled (not stuck on a placeholder).
    assert len({t.params["lr"] for t in study.trials}) > 1
    # The wrapper forwards the trial lifecycle hooks.
    assert spy.before == list(range(15))
    assert spy.after == [(n, TrialState.COMPLETE) for n in range(15)]


def test_relative_search_space_hides_learned_names() -> None:
    spy = SpyTPE()
    sampler = DEELBoSampler(spy)
    study = optuna.create_study(sampler=sampler)
    study.optimize(cheap_objective, n_trials=12)

    # The base sampler's own inference includes weight_decay (it is in every trial) ...
    assert any("weight_decay" in space for space in spy.inferred)
    # ... but the space handed to its sample_relative never does, and it is not empty.
    after_startup = [space for space in spy.relative if space]
    assert after_startup, "multivariate TPE never got a relative search space"
    assert all(set(space) == ALL_NAMES - {"weight_decay"} for space in after_startup)
    # Called directly: the wrapper's view drops weight_decay, the base sampler's keeps it.
    last = study.trials[-1]
    assert "weight_decay" in spy.infer_relative_search_space(study, last)
    assert set(sampler.infer_relative_search_space(study, last)) == ALL_NAMES - {"weight_decay"}


def test_sample_relative_filters_a_smuggled_learned_name() -> None:
    spy = SpyRandom()
    sampler = DEELBoSampler(spy)
    study = optuna.create_study(sampler=sampler)
    study.optimize(cheap_objective, n_trials=1)
    spy.relative.clear()
    running = study._storage.get_trial(study.ask()._trial_id)
    distributions = study.trials[0].distributions
    sampler.sample_relative(study, running, dict(distributions))
    assert spy.relative == [{k: v for k, v in distributions.items() if k != "weight_decay"}]


class _OddDistribution(BaseDistribution):
    """A distribution type the wrapper has no placeholder for."""

    def to_internal_repr(self, param_value_in_external_repr: Any) -> float:
        return float(param_value_in_external_repr)

    def single(self) -> bool:
        return False

    def _contains(self, param_value_in_internal_repr: float) -> bool:
        return True


def test_unsupported_learned_distribution_is_a_config_error() -> None:
    sampler = DEELBoSampler(RandomSampler(seed=0))
    study = optuna.create_study(sampler=sampler)
    study.optimize(lr_only_objective, n_trials=1)
    with pytest.raises(ConfigError, match="weight_decay"):
        sampler.sample_independent(study, study.trials[0], "weight_decay", _OddDistribution())


# --------------------------------------------------------------------------------------------
# 2. GridSampler wrapped: grid covered once, study stops itself
# --------------------------------------------------------------------------------------------


def test_grid_sampler_alone_cannot_run_the_objective() -> None:
    """Control: without the wrapper, weight_decay reaches GridSampler and the trial fails."""
    study = optuna.create_study(sampler=GridSampler({"lr": LR_GRID}))
    with pytest.raises(ValueError, match="weight_decay"):
        study.optimize(lr_only_objective, n_trials=1)


def test_wrapped_grid_sampler_covers_grid_and_stops() -> None:
    grid = GridSampler({"lr": LR_GRID}, seed=0)
    sampler = DEELBoSampler(grid)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lr_only_objective, n_trials=10)

    trials = study.trials
    assert len(trials) == 4  # after_trial forwarded: GridSampler stopped the study
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.params["lr"] for t in trials) == sorted(LR_GRID)
    assert all(t.params["weight_decay"] == WEIGHT_DECAY_RANGE[0] for t in trials)
    # before_trial forwarded: GridSampler assigned each trial its grid point.
    assert sorted(t.system_attrs["grid_id"] for t in trials) == [0, 1, 2, 3]
    assert all(t.system_attrs["search_space"] == {"lr": LR_GRID} for t in trials)
    assert grid.is_exhausted(study)


def test_wrapped_grid_with_learned_name_in_grid_via_without_learned() -> None:
    space = {"lr": LR_GRID[:2], "weight_decay": [1e-3, 1e-5]}
    study = optuna.create_study(sampler=DEELBoSampler(GridSampler(without_learned(space, ["weight_decay"]))))
    study.optimize(lr_only_objective, n_trials=10)
    assert len(study.trials) == 2
    assert sorted(t.params["lr"] for t in study.trials) == sorted(LR_GRID[:2])


# --------------------------------------------------------------------------------------------
# 3. reseed_rng
# --------------------------------------------------------------------------------------------


def test_reseed_rng_is_forwarded_directly() -> None:
    spy = SpyRandom()
    sampler = DEELBoSampler(spy)
    sampler.reseed_rng()
    sampler.reseed_rng()
    assert spy.reseeds == 2


def test_reseed_rng_is_forwarded_under_n_jobs() -> None:
    spy = SpyRandom()
    study = optuna.create_study(sampler=DEELBoSampler(spy))
    study.optimize(cheap_objective, n_trials=2, n_jobs=1)
    assert spy.reseeds == 0
    study.optimize(cheap_objective, n_trials=4, n_jobs=2)
    assert spy.reseeds >= 1
    assert "weight_decay" not in spy.independent


# --------------------------------------------------------------------------------------------
# 4. Constructor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("learned", [(), [], ("",), ("weight_decay", ""), "", (1,)], ids=repr)
def test_bad_learned_is_a_config_error(learned: Any) -> None:
    with pytest.raises(ConfigError, match="learned"):
        DEELBoSampler(RandomSampler(), learned=learned)


@pytest.mark.parametrize("base", [None, "tpe", TPESampler, object()], ids=["none", "str", "class", "object"])
def test_non_sampler_base_is_a_config_error(base: Any) -> None:
    with pytest.raises(ConfigError, match="base_sampler"):
        DEELBoSampler(base)


def test_constructor_accepts_bare_string_and_sequences() -> None:
    base = RandomSampler()
    assert DEELBoSampler(base, learned="weight_decay").learned == frozenset({"weight_decay"})
    assert DEELBoSampler(base).learned == frozenset({"weight_decay"})
    assert DEELBoSampler(base, learned=["lr", "weight_decay", "lr"]).learned == frozenset({"lr", "weight_decay"})
    assert DEELBoSampler(base).base_sampler is base


def test_bare_string_learned_hides_only_that_name() -> None:
    spy = SpyRandom()
    study = optuna.create_study(sampler=DEELBoSampler(spy, learned="weight_decay"))
    study.optimize(cheap_objective, n_trials=3)
    assert set(spy.independent) == ALL_NAMES - {"weight_decay"}
    assert all(t.params["weight_decay"] == WD_LOW for t in study.trials)


# --------------------------------------------------------------------------------------------
# 5. learned_names
# --------------------------------------------------------------------------------------------


def _learned_inside(sampler: BaseSampler) -> frozenset[str]:
    seen: list[frozenset[str]] = []

    def objective(trial: Trial) -> float:
        seen.append(learned_names(trial))
        return lr_only_objective(trial)

    optuna.create_study(sampler=sampler).optimize(objective, n_trials=1)
    assert len(seen) == 1
    return seen[0]


def test_learned_names() -> None:
    assert learned_names(FixedTrial({"lr": 0.1, "weight_decay": 1e-4})) == frozenset()
    assert _learned_inside(TPESampler(seed=0)) == frozenset()
    assert _learned_inside(DEELBoSampler(RandomSampler(seed=0))) == frozenset({"weight_decay"})
    both = DEELBoSampler(RandomSampler(seed=0), learned=("weight_decay", "lr"))
    assert _learned_inside(both) == frozenset({"weight_decay", "lr"})
    # ask-and-tell trials too
    study = optuna.create_study(sampler=DEELBoSampler(RandomSampler(seed=0)))
    assert learned_names(study.ask()) == frozenset({"weight_decay"})


# --------------------------------------------------------------------------------------------
# 6. without_learned
# --------------------------------------------------------------------------------------------


def test_without_learned() -> None:
    space: dict[str, Any] = {"lr": (0.1, 0.01), "weight_decay": [1e-3, 1e-4], "batch": [32]}
    out = without_learned(space, ["weight_decay"])
    assert out == {"lr": [0.1, 0.01], "batch": [32]}
    assert list(out) == ["lr", "batch"]
    assert isinstance(out["lr"], list)
    assert "weight_decay" in space  # input untouched
    assert without_learned(space, iter(["weight_decay", "absent"])) == out
    assert without_learned(space, []) == {"lr": [0.1, 0.01], "weight_decay": [1e-3, 1e-4], "batch": [32]}


# --------------------------------------------------------------------------------------------
# 7-8. The shared user objective under the wrapper and under plain samplers (real training)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task() -> TaskSpec:
    spec, _ = digits_task(n_train=50, steps=20, pretrain_steps=20)
    return spec


def _complete(study: Study) -> list[FrozenTrial]:
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert trials, "no trial completed"
    return trials


def _positive_finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _check_deelbo_trial(trial: FrozenTrial, task: TaskSpec) -> None:
    attrs = trial.user_attrs
    assert attrs["mode"] == "deelbo"
    assert trial.params["weight_decay"] == WEIGHT_DECAY_RANGE[0]  # only the placeholder
    for name in ("lambda", "weight_decay", "tau", "sigma"):
        assert _positive_finite(attrs[LEARNED_PREFIX + name]), (name, attrs.get(LEARNED_PREFIX + name))
    assert LEARNED_PREFIX + "trace" not in attrs  # a system attr since 0.4
    trace = A.series(trial, A.LEARNED_TRACE)
    assert isinstance(trace, list) and trace
    assert all(isinstance(row, list) and len(row) == 4 for row in trace)
    steps = [row[0] for row in trace]
    assert steps == sorted(set(steps))
    assert steps[-1] == task.steps
    # learned:* are the values at the final weights (DEELBo.learned_attrs); the trace's last row
    # averages the last log_every steps (lambda still grows there: up to ~30 % apart on this short run).
    final = [attrs["learned:lambda"], attrs["learned:tau"], attrs["learned:sigma"]]
    assert trace[-1][1:] == pytest.approx(final, rel=0.5)  # same quantities and units (a sigma-for-lambda mix-up fails)
    assert trial.value is not None and math.isfinite(trial.value)
    assert trial.value == attrs["train:loss"]
    assert 0.0 <= attrs["test:accuracy"] <= 1.0
    assert "val:nll" not in attrs


def _check_map_trial(trial: FrozenTrial) -> None:
    attrs = trial.user_attrs
    assert attrs["mode"] == "map"
    assert not [k for k in attrs if k.startswith(LEARNED_PREFIX)]
    assert trial.value is not None and math.isfinite(trial.value)
    assert trial.value == attrs["val:nll"]


def test_same_objective_under_wrapper_trains_deelbo(task: TaskSpec) -> None:
    study = optuna.create_study(sampler=DEELBoSampler(GridSampler({"lr": [0.1, 0.01]})))
    study.optimize(task_objective(task), n_trials=5)
    trials = _complete(study)
    assert len(study.trials) == len(trials) == 2
    assert sorted(t.params["lr"] for t in trials) == [0.01, 0.1]
    for trial in trials:
        _check_deelbo_trial(trial, task)


def test_same_objective_under_plain_tpe_trains_map(task: TaskSpec) -> None:
    study = optuna.create_study(sampler=TPESampler(seed=0))
    study.optimize(task_objective(task), n_trials=2)
    trials = _complete(study)
    assert len(trials) == 2
    for trial in trials:
        _check_map_trial(trial)
        assert WEIGHT_DECAY_RANGE[0] <= trial.params["weight_decay"] <= WEIGHT_DECAY_RANGE[1]


def test_same_objective_under_plain_grid_trains_map(task: TaskSpec) -> None:
    study = optuna.create_study(sampler=GridSampler({"lr": [0.1], "weight_decay": [1e-4]}))
    study.optimize(task_objective(task), n_trials=3)
    trials = _complete(study)
    assert len(study.trials) == len(trials) == 1
    _check_map_trial(trials[0])
    assert trials[0].params == {"lr": 0.1, "weight_decay": 1e-4}


def test_learned_attrs_survive_sqlite_round_trip(task: TaskSpec, tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    values: dict[int, float] = {}
    objective = task_objective(task)

    def recording(trial: Trial) -> float:
        values[trial.number] = objective(trial)
        return values[trial.number]

    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(
        storage=storage, study_name="deelbo", sampler=DEELBoSampler(GridSampler({"lr": [0.1, 0.01]}))
    )
    study.optimize(recording, n_trials=2)
    written = {t.number: t.user_attrs for t in study.trials}
    storage.remove_session()
    storage.engine.dispose()

    # A fresh process-like reader: a new storage object from the URL, as optuna-dashboard opens it.
    loaded = optuna.load_study(study_name="deelbo", storage=url)
    assert len(loaded.trials) == 2
    for trial in loaded.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs == written[trial.number]
        assert trial.value == values[trial.number]
        _check_deelbo_trial(trial, task)

    # And the attrs really are rows in the file, JSON-encoded.
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT t.number, a.key, a.value_json FROM trial_user_attributes a JOIN trials t USING (trial_id)"
        ).fetchall()
    on_disk = {(number, key): json.loads(value) for number, key, value in rows}
    for number, attrs in written.items():
        for key in ("learned:weight_decay", "learned:lambda", "mode"):
            assert on_disk[(number, key)] == attrs[key]
        assert (number, "learned:trace") not in on_disk
    with sqlite3.connect(path) as conn:  # the trace is a system attr row of the same file
        system = conn.execute(
            "SELECT t.number, a.value_json FROM trial_system_attributes a JOIN trials t USING (trial_id) "
            "WHERE a.key = 'learned:trace'"
        ).fetchall()
    assert sorted(number for number, _ in system) == sorted(written)
    for number, value in system:
        trace = json.loads(value)
        assert trace == A.series(loaded.trials[number], A.LEARNED_TRACE) and len(trace[0]) == 4
