"""benchmarks/paper.py's pure parts: the verdict and range text in its tables, averaging curves, kaleido's Chromium."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from optuna_deelbo.report._budget import CurvePoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper import _mean_curve, _range, _verdict, use_debian_chromium


def test_verdict_says_loses_when_deelbo_is_a_point_or_more_behind() -> None:
    text = _verdict([0.90, 0.92, 0.91], [0.95, 0.93, 0.90], "tpe")
    assert text == "**LOSES** to tpe (-1.7 pts; behind on 2/3 sets)"


def test_verdict_within_one_point_still_counts_the_sets_behind() -> None:
    assert _verdict([0.900, 0.910], [0.905, 0.912], "grid") == "within 1 pt of grid (-0.4 pts; behind on 2/2 sets)"
    assert _verdict([0.97], [0.95], "grid") == "beats grid (+2.0 pts; behind on 0/1 sets)"


def test_verdict_needs_the_same_training_sets() -> None:
    with pytest.raises(ValueError):
        _verdict([0.9, 0.9], [0.9], "tpe")


def test_range_is_mean_min_max_in_percent() -> None:
    assert _range([0.5, 0.6, 0.7]) == "60.0 (50.0-70.0)"
    assert _range([12.0, 14.0], scale=1.0, fmt=".0f") == "13 (12-14)"


def test_mean_curve_averages_equal_sizes_across_training_sets() -> None:
    a = [CurvePoint(1, 10.0, 0.5, 24), CurvePoint(2, 20.0, 0.7, 276)]
    b = [CurvePoint(1, 14.0, 0.7, 24)]  # a training set whose search stopped after one trial
    assert _mean_curve([a, b]) == [CurvePoint(1, 12.0, 0.6, 48), CurvePoint(2, 20.0, 0.7, 276)]


def test_kaleido_is_pointed_at_debian_chromium_only_when_unset_and_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium = tmp_path / "chromium"
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    assert use_debian_chromium(chromium) is None  # absent: leave kaleido to its own search
    chromium.write_text("")
    assert use_debian_chromium(chromium) == str(chromium)
    monkeypatch.setenv("BROWSER_PATH", "/opt/my-chrome")
    assert use_debian_chromium(chromium) == "/opt/my-chrome"  # the user's choice wins
