"""CLI fuzz: every subcommand's every option with bad values ends in exit 0 or 2 with one line, never a traceback."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from _hypothesis_profiles import examples
from _safety import BAD_VALUES, EXTREME_VALUES, run_cli, value_options
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


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


def _one_line(argv: list[str], code: int, err: str) -> str:
    """The one ``optuna-deelbo...: error:`` line of a failed call (at most 1,000 characters), else fail."""
    assert "Traceback" not in err, (argv[:12], err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0], (argv[:12], code, err[-2000:])
    assert len(lines[0]) < 1000, lines[0][:300]
    return lines[0]


#: Issue 31's option families: counts, seeds, learning rates, ports, and every option that takes text.
FAMILIES = {
    "count": [c for c in CASES if c[1] in ("--n-train", "--steps", "--batch-size", "--pretrain-steps", "--tpe-trials")]
    + [c for c in CASES if c[1] in ("--checkpoint-every", "--threads", "--heartbeat-interval", "--grace-period")],
    "retries": [("worker", "--max-retry")],
    "seed": [("compare", "--seed")],
    "learning rates": [("compare", "--lrs")],
    "port": [("proxy", "--port")],
    "text": [c for c in CASES if c[1] in ("--storage", "--study", "--device", "--report", "--out", "--strategies")],
}


def test_the_families_cover_every_numeric_option() -> None:
    covered = {c for cases in FAMILIES.values() for c in cases}
    numeric = {"--n-train", "--steps", "--batch-size", "--pretrain-steps", "--tpe-trials", "--seed", "--lrs"}
    numeric |= {"--checkpoint-every", "--threads", "--heartbeat-interval", "--grace-period", "--max-retry"}
    assert {c for c in CASES if c[1] in numeric} <= covered
    assert len(FAMILIES["count"]) == 9


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_extreme_values_end_in_one_line_per_option_family(tmp: Path, family: str) -> None:
    """Issue 31, 3: 1e308, 2**63, -0.0, nan, inf and a 10,000-digit integer, for every option of the family."""
    for command, option in FAMILIES[family]:
        for value in EXTREME_VALUES:
            base = ["proxy", "--storage", "sqlite:///:memory:"] if command == "proxy" else _base(command, tmp)
            argv = [*base, option, value]
            code, err = run_cli(argv)
            if family != "text":  # a number option takes none of them
                assert code == 2, (option, value[:40], code, err[-500:])
            assert code in (0, 2), (option, value[:40], code, err[-2000:])
            if code == 2:
                line = _one_line(argv, code, err)
                assert option in line or family == "text", line[:300]


def test_issue31_learning_rates_past_the_bound_are_one_line_errors(tmp: Path) -> None:
    """The two reproductions: ``--lrs 1e308`` reached torch's SGD (overflow), a 20-digit rate every trial."""
    for value, strategy in (("1e308", "deelbo"), ("99999999999999999999", "grid")):
        argv = [*_base("compare", tmp), "--lrs", value, "--strategies", strategy]
        code, err = run_cli(argv)
        line = _one_line(argv, code, err)
        assert code == 2 and "argument --lrs" in line and "1e-10 to 1e+06" in line, line


def test_a_search_whose_every_trial_diverged_ends_in_one_line_with_exit_1(tmp: Path) -> None:
    """lr 1e6 on 20 steps diverges in every trial: exit 1, the first trial's reason, the study kept."""
    url = f"sqlite:///{tmp / 'all-diverged.db'}"
    argv = [*_base("compare", tmp), "--storage", url, "--lrs", "1e6", "--strategies", "grid", "--steps", "20"]
    code, err = run_cli(argv)
    line = _one_line(argv, code, err)
    assert code == 1, (code, line)
    assert "strategy 'grid': all 6 trials failed or were pruned; the first (lr=1e+06, weight_decay=0.01): " in line
    assert "diverging: training NLL" in line and "at the end of training (step 20, lr=1e+06)" in line, line
    study = optuna.load_study(study_name="digits-N25-seed0/l2-sp/grid", storage=url)  # kept for inspection
    assert len(study.trials) == 6
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    assert all(t.user_attrs["failure:reason"].startswith("diverging") for t in study.trials)


def test_an_own_error_inside_a_trial_is_not_logged_with_a_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """Optuna logs a failed trial's exception with its traceback; the CLI reports its own errors in one line."""
    import optuna_deelbo as od
    from optuna_deelbo.cli import _one_line_errors

    def fails(trial: optuna.Trial) -> float:
        raise od.ConfigError("a bad setting found inside the trial")

    def crashes(trial: optuna.Trial) -> float:
        raise ZeroDivisionError("a bug")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study()
        with _one_line_errors(), pytest.raises(od.ConfigError):
            study.optimize(fails, n_trials=1)
        assert capfd.readouterr().err == ""
        with _one_line_errors(), pytest.raises(ZeroDivisionError):  # a bug keeps Optuna's traceback
            study.optimize(crashes, n_trials=1)
        err = capfd.readouterr().err
        assert "Traceback" in err and "Trial 1 failed with parameters" in err and "Trial 1 failed with value" in err
    finally:
        optuna.logging.set_verbosity(optuna.logging.ERROR)


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
