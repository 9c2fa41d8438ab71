"""CLI fuzz: every subcommand's every option with bad values ends in exit 0 or 2 with one line, never a traceback."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from _safety import BAD_VALUES, run_cli, value_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

optuna.logging.set_verbosity(optuna.logging.ERROR)

COMMANDS = ("compare", "report", "worker", "finish")
_FRESH = itertools.count()
#: Every option that takes a value (flags take none; --compile alone would compile for minutes).
CASES = [(c, option) for c in COMMANDS for option in value_options(c)]


def _base(command: str, tmp: Path) -> list[str]:
    """A valid, tiny call of ``command`` on a fresh storage (so a valid value runs all the way, to the report)."""
    url = f"sqlite:///{tmp / f'fuzz-{next(_FRESH)}.db'}"
    if command == "compare":
        tiny = ["--strategies", "deelbo", "--n-train", "25", "--steps", "1", "--pretrain-steps", "1"]
        return ["compare", *tiny, "--report", "", "--no-progress", "--storage", url, "--device", "cpu"]
    if command == "report":
        return ["report", "--storage", url, "--out", str(tmp / "report.html")]
    return [command, "--storage", url, "--study", "no-such-study", "--device", "cpu"]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder that is also the working directory: relative paths among the values land there, not in the checkout."""
    folder = tmp_path_factory.mktemp("fuzz")
    with contextlib.chdir(folder):
        yield folder


def test_every_option_is_fuzzed() -> None:
    options = set(CASES)
    assert ("compare", "--seed") in options and ("worker", "--max-retry") in options
    assert len(CASES) >= 28  # 30 value options over the four subcommands today


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), value=st.one_of(st.sampled_from(BAD_VALUES), st.text(max_size=8)))
def test_bad_option_values_end_in_one_line(tmp: Path, case: tuple[str, str], value: str) -> None:
    command, option = case
    argv = [*_base(command, tmp), option, value]
    code, err = run_cli(argv)
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("optuna-deelbo")]
        assert len(errors) == 1 and "error" in errors[0], (argv, err[-2000:])


def test_valid_base_callsrun_cli(tmp: Path) -> None:
    """The fuzz's starting points are valid: a bad value is what makes a fuzzed call fail."""
    assert run_cli(_base("compare", tmp))[0] == 0


def test_output_paths_are_checked_before_training(tmp: Path) -> None:
    for bad in ("/nonexistent/dir/report.html", "/proc/forbidden/report.html"):
        code, err = run_cli([*_base("compare", tmp), "--report", bad])
        assert code == 2 and "--report" in err and "Traceback" not in err, err
        code, err = run_cli(["report", "--storage", f"sqlite:///{tmp / 'x.db'}", "--out", bad])
        assert code == 2 and "--out" in err, err


def test_seed_minus_one_is_a_one_line_error() -> None:
    code, err = run_cli(["compare", "--seed", "-1"])
    assert code == 2 and err.strip().count("\n") == 0 and "--seed" in err, err


PATH_OPTIONS = [
    ("compare", "--report"),
    ("compare", "--storage"),
    ("compare", "--data-dir"),
    ("compare", "--cache-dir"),
    ("compare", "--artifacts"),
    ("report", "--out"),
    ("report", "--storage"),
    ("worker", "--storage"),
    ("worker", "--artifacts"),
    ("worker", "--study"),
    ("finish", "--study"),
]


@pytest.mark.parametrize(("command", "option"), PATH_OPTIONS)
def test_a_nul_byte_in_any_path_option_is_a_one_line_error(tmp: Path, command: str, option: str) -> None:
    """Issue 22, case 13: the fuzz drew ``compare --report $'\\x00'``: a ``ValueError: embedded null byte``."""
    code, err = run_cli([*_base(command, tmp), option, "a\x00b"])
    assert code == 2 and "Traceback" not in err and option in err and "NUL" in err, err
    assert err.strip().count("\n") == 0, err


def test_version_and_options_that_do_not_apply(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22, case 12: no --version; --backbone resnet18 on digits silently ignored."""
    from optuna_deelbo import __version__
    from optuna_deelbo.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"optuna-deelbo {__version__}"
    for extra in (["--backbone", "resnet18"], ["--data-dir", str(tmp)], ["--cache-dir", str(tmp)]):
        code, err = run_cli([*_base("compare", tmp), *extra])
        assert code == 2 and extra[0] in err and "CIFAR tasks only" in err, err
    code, err = run_cli([*_base("compare", tmp), "--checkpoint-every", "5"])
    assert code == 2 and "--plan-only" in err, err


def test_lrs_sets_the_grid_and_a_log_file_gets_one_line_per_trial(tmp: Path) -> None:
    """Issue 22, case 12: no way to choose the learning rates; nothing between header and table in a log file."""
    import io

    from optuna_deelbo.cli import main

    url = f"sqlite:///{tmp / 'lrs.db'}"
    argv = [*_base("compare", tmp), "--storage", url, "--lrs", "0.05,0.02"]
    out = io.StringIO()  # not a terminal, as a redirected log file
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    study = optuna.load_study(study_name="digits-N25-seed0/l2-sp/deelbo", storage=url)
    assert sorted(t.params["lr"] for t in study.trials) == [0.02, 0.05]
    lines = [line for line in out.getvalue().splitlines() if ": trial " in line]
    assert len(lines) == 2 and all("/2 lr=" in line and " (learned)" in line for line in lines), lines
    assert not any("weight_decay=1e-07" in line for line in lines)  # the learned value, not the placeholder


def test_error_texts_name_the_cli_flag_and_the_extra(tmp: Path) -> None:
    """Issue 22, case 12: 'pass download=True' (no such CLI flag); a missing PostgreSQL driver named no extra."""
    import optuna_deelbo as od

    empty = tmp / "no-cifar-here"
    empty.mkdir()
    with pytest.raises(od.ConfigError, match="--dataset cifar10-jpeg --data-dir"):
        od.data.load_cifar10_torchvision(str(empty))
    with pytest.raises(od.StorageError, match=r"pip install 'optuna-deelbo\[postgres\]'"):
        od.open_storage("postgresql+pg8000://user@localhost/db")  # a driver that is not installed
