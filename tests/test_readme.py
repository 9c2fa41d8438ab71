"""The README's set-up commands and the docs' architecture page stay true to the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, re.S)]


def test_exactly_two_setup_commands() -> None:
    blocks = _bash_blocks()
    assert len(blocks) == 2, blocks
    assert all(len(b.splitlines()) == 1 for b in blocks)
    assert blocks[0].endswith("optuna-deelbo compare")
    assert "pytest" in blocks[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _bash_blocks()[1] in ci


def test_architecture_lists_every_module() -> None:
    section = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "optuna_deelbo"
    modules = [p for p in package.rglob("*.py") if "hub" not in p.relative_to(package).parts]
    for path in modules:
        if path.name == "__init__.py" and path.parent != package:
            assert f"{path.parent.name}/" in section, f"{path.parent.name}/ missing from the architecture section"
        else:
            assert path.name in section, f"{path.relative_to(package)} missing from docs/architecture.md"
    names = {p.name for p in modules}
    for name in re.findall(r"^\s{6,8}(\w+\.py)", section, re.M):
        assert name in names, f"docs/architecture.md names {name}, which does not exist"


def test_measured_table_is_in_readme() -> None:
    assert "RESULTS_TABLE" not in README
    measured = (ROOT / "benchmarks" / "results" / "compare-digits.md").read_text()
    table = "\n".join(line for line in measured.splitlines() if line.startswith("|"))
    assert table and table in README
