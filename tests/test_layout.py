"""The package layout stays readable: layers that import downwards only, small folders, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "optuna_deelbo"
#: Bottom to top: a module may import its own layer and the ones before it, never one after it.
LAYERS = ("regularizers", "bayes", "train", "data", "tuning", "report")


def _modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "hub" not in p.relative_to(PACKAGE).parts]


def _layer(module: str) -> int | None:
    """Index in LAYERS of ``optuna_deelbo.<layer>...``; None for the top level (_errors, cli, ...)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[0] == "optuna_deelbo" and parts[1] in LAYERS else None


def test_layers_import_only_downwards() -> None:
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] not in LAYERS:
            continue
        own = LAYERS.index(rel.parts[0])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                layer = _layer(node.module)
                assert layer is None or layer <= own, f"{rel} ({LAYERS[own]}) imports {node.module}"


def test_at_most_twelve_modules_a_folder() -> None:
    folders: dict[Path, int] = {}
    for path in _modules():
        if path.name != "__init__.py":
            folders[path.parent] = folders.get(path.parent, 0) + 1
    assert max(folders.values()) <= 12, {str(k.relative_to(PACKAGE.parent)): v for k, v in folders.items() if v > 12}


def test_no_function_over_100_lines() -> None:
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 100:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
    assert not long, long
