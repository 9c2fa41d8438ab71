"""benchmarks/regenerate.py: it covers every benchmark script, picks steps and devices, never mixes storages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import regenerate
from regenerate import STEPS, commands, main, uncovered_scripts


def test_every_benchmark_script_is_run_by_some_step() -> None:
    assert uncovered_scripts() == [], "add the new benchmark to STEPS in benchmarks/regenerate.py"
    assert all((regenerate.HERE / s.script).exists() for s in STEPS)


def test_a_script_no_step_runs_is_reported(tmp_path: Path) -> None:
    for name in ("_record.py", "regenerate.py", "paper.py", "new_benchmark.py"):
        (tmp_path / name).write_text("")
    assert uncovered_scripts(tmp_path) == ["new_benchmark.py"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_step_runs_on_both_devices_with_its_storage_under_results(device: str) -> None:
    plan = commands(device, data_dir="/data")
    assert [s.name for s, _ in plan] == [s.name for s in STEPS]
    for step, argv in plan:
        assert argv[0] == sys.executable
        assert argv[1].endswith(step.script)
        assert not any("{" in a for a in argv), argv  # every placeholder filled
        for url in (argv[i + 1] for i, a in enumerate(argv) if a == "--storage"):
            assert url.startswith(f"sqlite:///{regenerate.RESULTS}/")
    by_name = {s.name: argv for s, argv in plan}
    assert by_name["paper-split-cifar"][by_name["paper-split-cifar"].index("--data-dir") + 1] == "/data"
    assert ("--threads" in by_name["paper-digits"]) == (device == "cpu")
    if device == "cuda":  # the paper's N values are paper.py's GPU defaults: no --n cuts them
        assert "--n" not in by_name["paper-split-cifar"] and "--n" not in by_name["split-cifar"]


def test_only_picks_steps_in_order_and_rejects_unknown_names() -> None:
    assert [s.name for s, _ in commands("cpu", ["dashboard", "paper-digits"])] == ["paper-digits", "dashboard"]
    with pytest.raises(ValueError, match="unknown step"):
        commands("cpu", ["paper"])
    with pytest.raises(ValueError, match="device must be"):
        commands("tpu")


def test_dashboard_never_puts_its_tiny_run_into_a_missing_paper_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(regenerate, "RESULTS", tmp_path)
    alone = commands("cpu", ["dashboard"])[0][1]
    assert alone[alone.index("--storage") + 1] == f"sqlite:///{tmp_path}/dashboard.db"
    argv = commands("cpu", ["paper-digits", "dashboard"])[1][1]
    assert argv[argv.index("--storage") + 1] == f"sqlite:///{tmp_path}/paper-digits-cpu.db"
    (tmp_path / "paper-digits-cpu.db").write_bytes(b"")
    alone = commands("cpu", ["dashboard"])[0][1]
    assert alone[alone.index("--storage") + 1] == f"sqlite:///{tmp_path}/paper-digits-cpu.db"


def test_list_prints_commands_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list", "--device", "cpu", "--only", "overhead"]) == 0
    out = capsys.readouterr().out
    assert "overhead.py --device cpu" in out
    assert "overhead-cpu.md" in out
    assert "paper.py" not in out


def test_every_results_file_names_the_step_that_writes_it(tmp_path: Path) -> None:
    """No orphans in benchmarks/results/: each file is an output of a regenerate step (which ``--list`` shows)."""
    from regenerate import orphan_results, step_writing

    assert orphan_results() == [], "add a Step whose outputs include these files (or delete them)"
    assert step_writing("paper-split-cifar-cpu-n50.md") == "paper-split-cifar-n50"
    assert step_writing("ablation-runs-b.csv") == "ablation"
    (tmp_path / "adhoc-run.md").write_text("# made by hand\n")
    (tmp_path / "scratch.db").write_text("")
    assert orphan_results(tmp_path) == ["adhoc-run.md"]


def test_every_results_record_names_its_regenerate_step() -> None:
    """Each markdown record says which step writes it (its CSV / figures are that step's outputs too)."""
    from regenerate import step_writing

    for md in sorted((regenerate.HERE / "results").glob("*.md")):
        step = step_writing(md.name)
        assert f"- regenerate step: `{step}`" in md.read_text(), md.name


def test_a_run_through_regenerate_names_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import _record

    monkeypatch.setenv(_record.REGENERATE_STEP_ENV, "memorisation")
    assert "- regenerate step: `memorisation` (`python benchmarks/regenerate.py --only memorisation`)" in (
        _record.RunRecord.start().header()
    )
    monkeypatch.delenv(_record.REGENERATE_STEP_ENV)
    assert "regenerate step: none (an ad-hoc run" in _record.RunRecord.start().header()


def test_a_record_names_its_command_and_storage_relative_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 35, item 5: a record's command reads as a reader types it in a clone, not as this machine's folders."""
    import _record

    repo, beside = _record.REPO, _record.REPO.parent
    argv = [f"{repo}/benchmarks/paper.py", "--storage", f"sqlite:///{repo}/benchmarks/results/p.db"]
    monkeypatch.setattr(sys, "argv", [*argv, "--data-dir", f"{beside}/shared/data"])
    monkeypatch.setenv(_record.REGENERATE_ENV, f"python {repo}/benchmarks/regenerate.py --only paper-digits")
    record = _record.RunRecord.start()
    assert record.command == (
        "python benchmarks/paper.py --storage sqlite:///benchmarks/results/p.db --data-dir ../shared/data"
    )
    assert record.parent == "python benchmarks/regenerate.py --only paper-digits"


def test_no_record_names_an_absolute_path_of_the_machine_it_ran_on() -> None:
    for md in sorted((regenerate.HERE / "results").glob("*.md")):
        for line in md.read_text().splitlines():
            if line.startswith(("- command:", "- storage:")):
                assert "sqlite:////" not in line and "`python /" not in line, (md.name, line)
