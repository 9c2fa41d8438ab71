"""Memory across trials (issue 34, 3): a search frees each trial's model, optimizer and DE-ELBo as the trial ends.

Users of the plain Trainer run out of CUDA memory across trials when every trial's model stays alive
until the garbage collector runs (transformers #31923): here the collector is off for the whole search,
so a trial's objects must go by reference counting alone, and the tensors alive after trial 10 must
weigh what they did after trial 2.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from _optional import optional_import

import optuna_deelbo as od
from optuna_deelbo.bayes import DEELBo

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _alive(kind: type) -> list[Any]:
    """Every object of ``kind`` the collector tracks (isinstance on some of torch's deprecated aliases warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return [obj for obj in gc.get_objects() if isinstance(obj, kind)]


def _live_tensor_bytes() -> int:
    """Bytes of every tensor storage Python can reach (each storage once)."""
    storages = {}
    for tensor in _alive(torch.Tensor):
        if not tensor.is_meta:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class _Tracked:
    """Weak references to every model a factory builds, and the live tensor bytes at each build."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build, self.models, self.bytes_at_build = build, [], []  # type: ignore[var-annotated]

    def __call__(self, *args: Any) -> Any:
        self.bytes_at_build.append(_live_tensor_bytes())
        model = self.build(*args)
        self.models.append(weakref.ref(model))
        return model

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.models)


@pytest.fixture
def no_garbage_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _deelbos_alive() -> int:
    return len(_alive(DEELBo))


@pytest.mark.usefixtures("no_garbage_collector")
@pytest.mark.parametrize(("name", "trials"), [("grid", 24), ("tpe", 12), ("deelbo", 4)])
def test_a_search_frees_every_trials_model_without_the_garbage_collector(
    name: str, trials: int, tiny_digits_task: od.TaskSpec
) -> None:
    tracked = _Tracked(tiny_digits_task.model_factory)
    task = dataclasses.replace(tiny_digits_task, model_factory=tracked)
    strategy = od.tuning.get_strategy(name, tpe_trials=trials, batched="off")
    od.tuning.run_strategy(strategy, task, optuna.storages.InMemoryStorage(), f"memory-{name}")
    assert len(tracked.models) >= trials  # (MAP strategies build one more: the winner's retraining)
    assert tracked.alive() == 0 and _deelbos_alive() == 0
    if trials >= 12:  # the tensors alive when trial 10 starts weigh what they did when trial 2 did
        assert tracked.bytes_at_build[10] <= tracked.bytes_at_build[2] * 1.02 + 64_000, tracked.bytes_at_build


@pytest.mark.usefixtures("no_garbage_collector")
def test_hyperparameter_search_of_the_trainer_keeps_at_most_the_last_trials_model(tmp_path: Path) -> None:
    optional_import("transformers", "transformers")
    optional_import("accelerate", "transformers")
    from test_transformers import _args, _model, _Texts

    from optuna_deelbo.integrations.transformers import DEELBoTrainer

    tracked = _Tracked(lambda trial=None: _model())
    trainer = DEELBoTrainer(model_init=tracked, args=_args(tmp_path), train_dataset=_Texts(24))
    sampler = od.DEELBoSampler(optuna.samplers.RandomSampler(seed=0))

    def hp_space(trial: optuna.Trial) -> dict[str, float]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.hyperparameter_search(hp_space=hp_space, backend="optuna", n_trials=12, sampler=sampler)
    assert len(tracked.models) >= 12
    assert tracked.alive() <= 1  # the Trainer may keep its last trial's model
    assert _deelbos_alive() <= 1  # and its DE-ELBo (trainer.deelbo)
    assert tracked.bytes_at_build[11] <= tracked.bytes_at_build[3] * 1.02 + 64_000, tracked.bytes_at_build
