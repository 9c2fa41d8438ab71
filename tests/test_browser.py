"""optuna-dashboard in a real browser: Debian's Chromium, driven by playwright, on a tiny compare run.

The page content is read from what Chromium rendered (page text, plotly's SVG titles), with
the same :func:`capture` that writes benchmarks/results/dashboard.png; screenshots go to tmp_path.
Without Chromium, playwright or optuna-dashboard the tests skip, except under CI (``CI`` set),
where ``.ci/run`` installs them and a missing one is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_STUDIES

from optuna_deelbo.report._dashboard import serve_dashboard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dashboard_screenshot import CHROMIUM, capture

_MISSING = [
    what
    for what, ok in (
        (CHROMIUM, Path(CHROMIUM).exists()),
        ("playwright", importlib.util.find_spec("playwright") is not None),
        ("optuna-dashboard", shutil.which("optuna-dashboard") is not None),
    )
    if not ok
]
pytestmark = pytest.mark.skipif(bool(_MISSING) and not os.environ.get("CI"), reason=f"missing: {_MISSING}")

ACCURACY_TITLE = "Test accuracy vs total tuning cost (tuning + retrain)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_chromium_shows_study_list_learned_attrs_saved_figures_and_note(tiny_compare_url: str, tmp_path: Path) -> None:
    with serve_dashboard(tiny_compare_url) as base:
        view = capture(base, TINY_STUDIES[0], tmp_path)
    assert set(TINY_STUDIES) <= set(view.study_names)
    assert {"learned:lambda", "learned:tau", "learned:sigma", "learned:weight_decay"} <= set(view.trial_attrs)
    assert "learned:trace" not in view.trial_attrs  # a system attr: drawn in the trajectories figure
    assert ACCURACY_TITLE in view.figure_titles
    assert any(t.startswith("Learned prior variances and posterior std") for t in view.figure_titles)
    assert "What this study is" in view.note and "Verdict on this task" in view.note
    assert "Learned by the best trial" in view.note
    assert len(view.widths) == 2 and all(w >= 1000 for w in view.widths)  # at least the viewport (1400)
    for png in view.screenshots:
        data = png.read_bytes()
        assert png.parent == tmp_path and data[:8] == PNG_MAGIC and len(data) > 20_000


def test_a_study_without_saved_figures_shows_none(tmp_path: Path) -> None:
    """The negative control: the checks above fail when the figures and learned attrs are absent."""
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=2)
    with serve_dashboard(url) as base:
        view = capture(base, "plain", tmp_path, timeout_ms=4_000)
    assert view.study_names == ["plain"]
    assert ACCURACY_TITLE not in view.figure_titles and not any("Learned" in t for t in view.figure_titles)
    assert not [a for a in view.trial_attrs if a.startswith("learned:")]
    assert "What this study is" not in view.note
