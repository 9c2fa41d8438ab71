"""The package layout stays readable: layers that import downwards only, Optuna only at the top, no Optuna
internals outside their one adapter, small folders, short functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "optuna_deelbo"
#: Bottom to top: a module may import its own layer and the ones before it, never one after it.
LAYERS = ("regularizers", "bayes", "train", "data", "models", "task", "tuning", "report", "integrations")
#: The layers that may import Optuna (and cli.py); below them only through :data:`OPTUNA_ADAPTER`.
OPTUNA_LAYERS = ("tuning", "report", "integrations")
#: The one module below the tuning layer that imports Optuna (what the training loop needs of a trial).
OPTUNA_ADAPTER = "_optuna_trial.py"
#: The one module that touches Optuna's private attributes (each use a function with its own test).
OPTUNA_INTERNALS = "tuning/_optuna_internals.py"


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


def _imports_optuna(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "optuna" or a.name.startswith("optuna.") for a in node.names):
            return True
        module = node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
        if module and (module == "optuna" or module.startswith("optuna.")):
            return True
    return False


def test_optuna_is_imported_only_above_the_task_layer_or_through_the_adapter() -> None:
    offenders = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in OPTUNA_LAYERS or str(rel) in ("cli.py", OPTUNA_ADAPTER):
            continue
        if _imports_optuna(ast.parse(path.read_text())):
            offenders.append(str(rel))
    assert not offenders, f"import Optuna only in {OPTUNA_LAYERS} (or via {OPTUNA_ADAPTER}): {offenders}"


#: ``x._name`` on an Optuna object: studies, trials, samplers, storages and Optuna's private modules.
_PRIVATE = re.compile(
    r"\b(study|trial|sampler|storage|base_sampler|frozen|self\._tpe)\._[a-z]\w*"
    r"|\boptuna(\.[a-z]\w*)*\._[a-z]\w*"
)


def test_no_optuna_private_attribute_outside_the_internals_adapter() -> None:
    found = []
    for path in _modules():
        rel = str(path.relative_to(PACKAGE))
        if rel == OPTUNA_INTERNALS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE.search(line.split("#")[0]):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, found


def test_the_private_attribute_check_would_catch_the_old_uses() -> None:
    """The grep above must fail on what 0.2 did (a check that cannot fail is no check)."""
    for line in (
        "        self._rng.rng.seed(trial_seed)".replace("self", "sampler"),
        "    storage = study._storage",
        "from optuna.storages._heartbeat import is_heartbeat_enabled",
        '            grid = getattr(base_sampler, "_search_space", {})'.replace(
            'getattr(base_sampler, "_search_space", {})', "base_sampler._search_space"
        ),
        "    store: optuna.artifacts._protocol.ArtifactStore",
    ):
        assert _PRIVATE.search(line), line


#: Modules tested in a file named after a concept rather than the module (each listed file must name the
#: module or one of its public names). Every other module with logic has ``tests/test_<name>.py``.
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "tuning/trials.py": ("test_public_api.py",),  # re-exports only
    "tuning/workers.py": ("test_public_api.py",),  # re-exports only
    "_divergence_rule.py": ("test_divergence.py",),
    "bayes/_deelbo.py": ("test_own_loop.py", "test_user_mistakes.py"),
    "data/_splits.py": ("test_tasks.py",),
    "integrations/lightning.py": ("test_integrations.py",),
    "models/_small_cnn.py": ("test_backbones.py",),
    "regularizers/_structural.py": ("test_regularization.py",),
    "report/_tables.py": ("test_dashboard.py",),
    "task/_builtin.py": ("test_tasks.py",),
    "task/_pretrain.py": ("test_tasks.py",),
    "task/_spec.py": ("test_tasks.py", "test_bad_inputs.py"),
    "task/_stored.py": ("test_workers.py", "test_deelbo_recipe.py"),
    "train/_types.py": ("test_training.py",),
    "tuning/_checkpoints.py": ("test_checkpoint.py",),
    "tuning/_fit.py": ("test_batchnorm.py", "test_checkpoint.py", "test_regularization.py"),
    "tuning/_storage.py": ("test_outages.py", "test_workers.py"),
    "tuning/_trial_queue.py": ("test_resume.py", "test_workers.py"),
    "tuning/strategies/_base.py": ("test_strategies.py",),
    "tuning/strategies/deelbo.py": ("test_strategies.py",),
    "tuning/strategies/default.py": ("test_no_search_baselines.py",),
    "tuning/strategies/grid.py": ("test_strategies.py",),
    "tuning/strategies/tpe.py": ("test_strategies.py", "test_regularization.py"),
    "tuning/strategies/tpe_budget.py": ("test_no_search_baselines.py",),
}
#: Modules without logic of their own (exceptions, re-exports).
NO_LOGIC = ("_errors.py",)
TESTS = Path(__file__).resolve().parent


def _public_names(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def test_every_module_with_logic_has_its_tests() -> None:
    missing = []
    for path in _modules():
        rel = str(path.relative_to(PACKAGE))
        if path.name == "__init__.py" or rel in NO_LOGIC:
            continue
        own = TESTS / f"test_{path.stem.lstrip('_')}.py"
        if own.exists():
            continue
        files = MODULE_TESTS.get(rel)
        if not files:
            missing.append(rel)
            continue
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        words = {dotted, *(_public_names(path) - {"__all__"})}
        for name in files:
            text = (TESTS / name).read_text()
            assert any(re.search(rf"\b{re.escape(w)}\b", text) for w in words), f"{name} never names {rel}"
    assert not missing, f"add tests/test_<module>.py or an entry in MODULE_TESTS: {missing}"


def test_benchmarks_use_the_public_api() -> None:
    """Benchmarks are what a user could write: no private module of the package (DESIGN.md's rule)."""
    private = re.compile(r"(from|import) optuna_deelbo(\.\w+)*\._\w+|\bod(\.\w+)*\._[a-z]\w*")
    found = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The package's modules an import statement names (``from pkg import sub`` names the module ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if modules[module].name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (top level, TYPE_CHECKING, inside functions).

    A module's import of its own package's ``__init__`` (which only re-exports) is not an edge.
    """
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "hub" not in p.relative_to(PACKAGE).parts}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(module, node, modules):
                    is_own_package = modules[target].name == "__init__.py" and module.startswith(f"{target}.")
                    if target != module and not is_own_package:
                        graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_not_even_through_type_checking_or_a_local_import() -> None:
    """Issue 35: bayes/_deelbo -> _selection -> _objectives (for typing) -> _deelbo was one."""
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    edges = import_graph()
    assert "optuna_deelbo.bayes._selection" in edges["optuna_deelbo.bayes._deelbo"]  # the real graph is read
