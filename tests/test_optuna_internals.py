"""Each use of Optuna's private state (tuning/_optuna_internals.py) on the installed Optuna: an upgrade that
renames or drops one fails here by name, not somewhere deep in a worker."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from optuna_deelbo.tuning import _optuna_internals as internals


@pytest.fixture
def study() -> optuna.Study:
    storage = optuna.storages.RDBStorage("sqlite:///:memory:", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=storage, study_name="internals")
    study.enqueue_trial({"x": 1.0})
    return study


def test_study_storage_and_id_are_the_ones_optuna_uses(study: optuna.Study) -> None:
    storage = internals.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_study_id_from_name("internals") == internals.study_id(study)


def test_trial_id_takes_a_waiting_trial_and_heartbeat_is_seen(study: optuna.Study) -> None:
    storage = internals.study_storage(study)
    (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert storage.set_trial_state_values(internals.trial_id(waiting), state=TrialState.RUNNING)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING
    assert internals.heartbeat_enabled(storage) is True
    assert internals.heartbeat_enabled(optuna.storages.InMemoryStorage()) is False


def test_clear_trials_cache_makes_the_study_read_again(study: optuna.Study) -> None:
    internals.clear_trials_cache(study)  # must not raise: the attribute Study.ask resets
    assert len(study.get_trials(deepcopy=False)) == 1


def test_grid_search_space_is_the_grid() -> None:
    sampler = optuna.samplers.GridSampler({"lr": [0.1, 0.01], "wd": [1e-4]})
    assert internals.grid_search_space(sampler) == {"lr": [0.1, 0.01], "wd": [1e-4]}
