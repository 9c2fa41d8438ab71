"""End to end: `optuna-deelbo compare` on a tiny budget into a real SQLite storage."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

import optuna_deelbo as od
from optuna_deelbo.cli import main

TINY = ["--steps", "20", "--pretrain-steps", "20", "--n-train", "50", "--tpe-trials", "3", "--no-progress"]


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("compare")
    url = f"sqlite:///{tmp / 'deelbo.db'}"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["compare", "--storage", url, "--report", str(tmp / "report.html"), *TINY])
    assert status == 0
    return tmp, out.getvalue()


def test_compare_prints_a_row_per_strategy(compare_run: tuple[Path, str]) -> None:
    _, text = compare_run
    row = r"^\| ([\w-]+) \| (\d+) \| ([\d.]+) \| ([\d.]+)% \|"
    rows = {m.group(1): m.groups() for m in re.finditer(row, text, re.M)}
    assert set(rows) == set(od.tuning.strategies.DEFAULT_STRATEGIES)
    assert rows["deelbo"][1] == "4" and rows["grid"][1] == "24" and rows["tpe"][1] == "3"
    assert 1 <= int(rows["tpe-budget"][1]) <= 3 and rows["default"][1] == "1"  # --tpe-trials caps tpe-budget too
    assert "optuna-dashboard sqlite:///" in text
    assert "speed-up vs grid" in text


def test_compare_stores_one_study_per_strategy_with_learned_attrs(compare_run: tuple[Path, str]) -> None:
    tmp, _ = compare_run
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp / 'deelbo.db'}")
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {f"digits-N50-seed0/l2-sp/{s}" for s in od.tuning.strategies.DEFAULT_STRATEGIES}
    deelbo = optuna.load_study(study_name="digits-N50-seed0/l2-sp/deelbo", storage=storage)
    lrs = sorted(t.params["lr"] for t in deelbo.trials)
    assert lrs == sorted(od.tuning.strategies.LEARNING_RATES)
    for trial in deelbo.trials:
        assert trial.user_attrs["mode"] == "deelbo"
        lam = trial.user_attrs["learned:lambda"]
        assert math.isfinite(lam) and lam > 0
        assert trial.user_attrs["learned:weight_decay"] > 0
        assert 0 < trial.user_attrs["time:test_eval_s"] < trial.user_attrs["time:trial_s"]
    grid = optuna.load_study(study_name="digits-N50-seed0/l2-sp/grid", storage=storage)
    assert all(t.user_attrs["mode"] == "map" and "learned:lambda" not in t.user_attrs for t in grid.trials)
    pairs = {(t.params["lr"], t.params["weight_decay"]) for t in grid.trials}
    assert len(pairs) == 24
    for study in (deelbo, grid):
        attrs = study.user_attrs
        assert attrs["time:total_s"] == pytest.approx(attrs["time:tuning_s"] + attrs["time:retrain_s"])
        assert 0 <= attrs["test:accuracy"] <= 1
    assert deelbo.user_attrs["time:retrain_s"] == 0.0
    assert grid.user_attrs["time:retrain_s"] > 0.0


def test_compare_writes_html_report_with_both_figures(compare_run: tuple[Path, str]) -> None:
    tmp, _ = compare_run
    html = (tmp / "report.html").read_text()
    assert html.count("plotly-graph-div") == 2  # accuracy vs time, lambda trace
    assert "Learned prior variances" in html and "Test accuracy vs total tuning cost" in html
    for name in ("deelbo", "grid", "tpe"):
        assert f"<td>{name}</td>" in html


def test_rerun_refuses_resumes_or_overwrites_never_mixes_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = ["compare", "--storage", url, "--strategies", "deelbo", "--report", "", *TINY]
    name = "digits-N50-seed0/l2-sp/deelbo"
    assert main(args) == 0
    first = optuna.load_study(study_name=name, storage=url).trials
    assert main(args) == 2  # refused: the study is there
    assert main([*args, "--resume"]) == 0  # finished: reused, nothing trained
    assert [t.datetime_start for t in optuna.load_study(study_name=name, storage=url).trials] == [
        t.datetime_start for t in first
    ]
    assert main([*args, "--overwrite"]) == 0  # asked: replaced
    again = optuna.load_study(study_name=name, storage=url).trials
    assert len(again) == 4 and again[0].datetime_start != first[0].datetime_start


def test_console_script_is_installed() -> None:
    exe = shutil.which("optuna-deelbo")
    assert exe is not None
    proc = subprocess.run([exe, "compare", "--help"], capture_output=True, text=True, check=True)
    assert "--storage" in proc.stdout and "--strategies" in proc.stdout
