"""The public surface stays put: ``optuna_deelbo.__all__``, each subpackage's, the names removed in 0.4, the CLI.

A rename or removal fails here on purpose; add new names to the lists in the same change.
"""

from __future__ import annotations

import argparse
import importlib
import re
import types
from pathlib import Path

import pytest

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
    "bayes": 30,
    "data": 20,
    "models": 16,
    "regularizers": 17,
    "report": 16,
    "task": 11,
    "train": 24,
    "tuning": 20,
    "tuning.trials": 11,
    "tuning.workers": 16,
    "tuning.attrs": 60,
    "tuning.strategies": 27,
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


def _removed_names() -> list[tuple[str, str]]:
    """CHANGELOG.md's table of the 0.3 names removed in 0.4: (old dotted name, where it lives now)."""
    text = (PACKAGE.parent / "CHANGELOG.md").read_text()
    return re.findall(r"^\| `(optuna_deelbo[\w.]*)` \| `(optuna_deelbo[\w.]*)` \|$", text, re.M)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        return target
    raise ImportError(dotted)


def test_the_names_deprecated_in_0_3_are_gone_and_the_changelog_names_each_new_home() -> None:
    removed = _removed_names()
    assert len(removed) >= 100
    for old, new in removed:
        package, _, name = old.rpartition(".")
        assert not hasattr(importlib.import_module(package), name), f"{old} is still served"
        _resolve(new)  # the CHANGELOG's new home exists
        assert not any(part.startswith("_") for part in new.split(".")), f"{new}: new home must be public"
    assert not callable(od.train)  # 0.2's od.train(...) call: the loop is od.train.train_model
    assert not hasattr(od.DEELBo, "report") and not hasattr(od.DEELBo, "learned_attrs")
    assert not hasattr(od.tuning.strategies.Strategy, "run")


def test_cli_subcommands_and_options_are_pinned() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {
        command: sorted(o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help"))
        for command, parser in sub.choices.items()
    }
    assert found == CLI_OPTIONS


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"module 'optuna_deelbo' has no attribute 'fitt'"):
        od.fitt  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(od.tuning, "TaskSpec")


def test_tuning_lists_at_most_25_names_and_every_old_one_has_one_public_home() -> None:
    """Issue 35: ``tuning.__all__`` <= 25; its 0.3 names live on in tuning.trials / tuning.workers, each once."""
    assert len(od.tuning.__all__) <= 25
    homes = [set(od.tuning.__all__), set(od.tuning.trials.__all__), set(od.tuning.workers.__all__)]
    assert not (homes[0] & homes[1]) and not (homes[0] & homes[2]) and not (homes[1] & homes[2])
    for gone in ("fit_deelbo", "run_worker", "create_strategy_study", "IF_EXISTS", "refuse_existing"):
        assert not hasattr(od.tuning, gone), gone
