"""The public surface stays put: ``optuna_deelbo.__all__``, each subpackage's, the moved names, the CLI's options.

A rename or removal fails here on purpose; add new names to the lists in the same change.
"""

from __future__ import annotations

import argparse
import importlib
import re
import types
from pathlib import Path

import optuna
import pytest
import torch

import optuna_deelbo as od
from optuna_deelbo.cli import build_parser

PACKAGE = Path(od.__file__).resolve().parent

#: The top level: what a user needs (about 30 names, subpackages included).
PUBLIC_NAMES = [
    "BatchNormWarning",
    "BuiltinTask",
    "CheckpointError",
    "ConfigError",
    "DEELBo",
    "DEELBoRecipe",
    "DEELBoSampler",
    "GaussianPrior",
    "IsotropicGaussian",
    "LowRankGaussian",
    "Minibatches",
    "MissingDependency",
    "PlaceholderWarning",
    "RECIPES",
    "Split",
    "StorageError",
    "StudyExists",
    "TaskSpec",
    "TrainingDiverged",
    "bayes",
    "best_params",
    "compare",
    "data",
    "digits_task",
    "evaluate",
    "expected_nll",
    "fit",
    "learned_params",
    "models",
    "open_storage",
    "recalibrate_batchnorm",
    "regularizers",
    "report",
    "report_learned",
    "split_cifar_task",
    "task",
    "text_task",
    "train",
    "tuning",
    "wordnet_task",
]

#: Each subpackage's ``__all__`` size: its real public surface (a change here is a change of the API).
SUBPACKAGE_SIZES = {
    "bayes": 32,
    "data": 20,
    "models": 16,
    "regularizers": 17,
    "report": 24,
    "task": 11,
    "train": 24,
    "tuning": 51,
    "tuning.attrs": 57,
    "tuning.strategies": 26,
    "integrations": 1,
}

CLI_OPTIONS = {
    "compare": [
        "--artifacts",
        "--backbone",
        "--batch-size",
        "--batched",
        "--cache-dir",
        "--checkpoint-every",
        "--compile",
        "--data-dir",
        "--dataset",
        "--device",
        "--lrs",
        "--n-train",
        "--no-progress",
        "--overwrite",
        "--plan-only",
        "--pretrain-steps",
        "--prior",
        "--recipe",
        "--report",
        "--resume",
        "--seed",
        "--steps",
        "--storage",
        "--strategies",
        "--tpe-trials",
    ],
    "report": [
        "--dashboard",
        "--out",
        "--storage",
    ],
    "worker": [
        "--artifacts",
        "--device",
        "--grace-period",
        "--heartbeat-interval",
        "--max-retry",
        "--storage",
        "--study",
        "--threads",
    ],
    "finish": [
        "--device",
        "--storage",
        "--study",
    ],
    "proxy": [
        "--host",
        "--port",
        "--storage",
    ],
}


def test_public_names_are_pinned() -> None:
    assert sorted(od.__all__) == PUBLIC_NAMES
    assert all(hasattr(od, name) for name in od.__all__)
    assert len(PUBLIC_NAMES) <= 40


@pytest.mark.parametrize("package", sorted(SUBPACKAGE_SIZES))
def test_subpackage_surfaces_are_pinned(package: str) -> None:
    module = importlib.import_module(f"optuna_deelbo.{package}")
    assert len(module.__all__) == SUBPACKAGE_SIZES[package], sorted(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)
    assert not [n for n in module.__all__ if n.startswith("_")]


def test_no_function_shadows_a_subpackage() -> None:
    for path in PACKAGE.rglob("__init__.py"):
        module = importlib.import_module(".".join(path.relative_to(PACKAGE.parent).parent.parts))
        for name in getattr(module, "__all__", ()):
            sub = path.parent / name
            if (sub / "__init__.py").exists() or sub.with_suffix(".py").exists():
                assert isinstance(getattr(module, name), types.ModuleType), f"{module.__name__}.{name}"


def _moved_maps() -> list[tuple[str, str, str]]:
    out = []
    for path in PACKAGE.rglob("__init__.py"):
        module = importlib.import_module(".".join(path.relative_to(PACKAGE.parent).parent.parts))
        moved = getattr(getattr(module, "__getattr__", None), "moved", {})
        out += [(module.__name__, old, new) for old, new in moved.items()]
    return out


@pytest.mark.parametrize(("package", "old", "new"), _moved_maps())
def test_every_moved_name_still_works_with_a_deprecation_warning(package: str, old: str, new: str) -> None:
    module_name, _, attr = new.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    assert not any(part.startswith("_") for part in module_name.split(".")), f"{new}: new home must be public"
    assert attr in importlib.import_module(module_name).__all__ or module_name.endswith("attrs")
    with pytest.warns(DeprecationWarning, match=re.escape(f"use {module_name}.{attr}")):
        assert getattr(importlib.import_module(package), old) is target


def test_old_calls_still_work_with_a_deprecation_warning() -> None:
    """0.2's ``od.train(...)`` (now the subpackage) and ``reg.report(trial)`` (now ``od.report_learned``)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    groups = od.bayes.ParameterGroups.split(model, ())
    objective = od.bayes.MAPObjective(model, groups, od.IsotropicGaussian.zero(groups.numel(model, "body")), 1e-4)
    config = od.train.TrainConfig(lr=0.1, steps=3, batch_size=4, progress=False, device="cpu")
    with pytest.warns(DeprecationWarning, match=r"od\.train\.train_model"):
        result = od.train(objective, x, y, config)  # type: ignore[operator]
    assert len(result.history) > 0 or result.final_loss == result.final_loss
    reg = od.DEELBo(model, n_train=12)
    study = optuna.create_study()
    trial = study.ask()
    reg.loss(torch.nn.functional.cross_entropy(reg(x), y)).backward()
    with pytest.warns(DeprecationWarning, match=r"report_learned"):
        attrs = reg.report(trial)
    assert attrs == od.tuning.attrs.prefixed_learned(reg.learned_values())
    with pytest.warns(DeprecationWarning, match=r"prefixed_learned"):
        assert reg.learned_attrs() == attrs
    assert study.trials[0].user_attrs[od.tuning.attrs.LEARNED_WEIGHT_DECAY] == attrs["learned:weight_decay"]


def test_cli_subcommands_and_options_are_pinned() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {
        command: sorted(o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help"))
        for command, parser in sub.choices.items()
    }
    assert found == CLI_OPTIONS


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    """``moved_names`` serves only the names it lists: a typo is an AttributeError, as without it."""
    from optuna_deelbo._deprecated import moved_names

    with pytest.raises(AttributeError, match=r"module 'optuna_deelbo' has no attribute 'fitt'"):
        od.fitt  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(od.tuning, "TaskSpec")
    with pytest.raises(AttributeError, match=r"'pkg' has no attribute 'x'"):
        moved_names("pkg", {})("x")
