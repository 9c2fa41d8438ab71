"""optuna-dashboard, started for real on loopback, serves the studies, learned user attrs, saved figures and notes."""

from __future__ import annotations

import json
import shutil
import urllib.request

import optuna
import pytest
from conftest import TINY_STUDIES

from optuna_deelbo import MissingDependency
from optuna_deelbo.report._dashboard import (
    ACCURACY_GRAPH_ID,
    TRAJECTORY_GRAPH_ID,
    save_storage_to_dashboard,
    serve_dashboard,
    study_note,
)
from optuna_deelbo.report._tables import load_comparisons
from optuna_deelbo.tuning import attrs as A

needs_dashboard = pytest.mark.skipif(shutil.which("optuna-dashboard") is None, reason="optuna-dashboard not installed")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@needs_dashboard
def test_dashboard_api_serves_learned_attrs_figures_and_notes(tiny_compare_url: str) -> None:
    with serve_dashboard(tiny_compare_url) as base:
        studies = {s["study_name"]: s for s in _get(f"{base}/api/studies")["study_summaries"]}
        assert set(studies) == set(TINY_STUDIES)
        deelbo = _get(f"{base}/api/studies/{studies[TINY_STUDIES[0]]['study_id']}?after=0")
        tpe = _get(f"{base}/api/studies/{studies[TINY_STUDIES[1]]['study_id']}?after=0")
    assert len(deelbo["trials"]) == 4
    keys = {a["key"] for t in deelbo["trials"] for a in t["user_attrs"]}
    assert {"learned:weight_decay", "learned:lambda", "learned:tau", "learned:sigma", "mode"} <= keys
    assert "learned:trace" not in keys  # issue 35: a system attr (one 100-row line made the trials page 9,000 px)
    assert {"time:total_s", "test:accuracy", "description"} <= {a["key"] for a in deelbo["user_attrs"]}
    # compare saved the figures (DE-ELBo: accuracy vs time + learned trajectories; TPE: accuracy only) and notes
    assert {g["id"] for g in deelbo["plotly_graph_objects"]} == {ACCURACY_GRAPH_ID, TRAJECTORY_GRAPH_ID}
    assert {g["id"] for g in tpe["plotly_graph_objects"]} == {ACCURACY_GRAPH_ID}
    figure = json.loads(next(g["graph_object"] for g in deelbo["plotly_graph_objects"] if g["id"] == ACCURACY_GRAPH_ID))
    assert sorted(trace["name"] for trace in figure["data"]) == ["deelbo", "tpe"]
    assert "What this study is" in deelbo["note"]["body"] and "validation NLL" in tpe["note"]["body"]


def test_study_note_says_what_the_study_is_and_the_verdict(tiny_compare_url: str) -> None:
    storage = optuna.storages.RDBStorage(tiny_compare_url)
    (results,) = load_comparisons(storage).values()
    study = optuna.load_study(study_name=TINY_STUDIES[0], storage=storage)
    note = study_note(study, results)
    assert "## deelbo on digits-N50-seed0" in note
    assert "N = 50 training examples, prior `l2-sp`, 10 SGD steps" in note
    assert "final training DE-ELBo loss" in note and "learned:trace" in note
    assert "**Verdict on this task:** DE-ELBo" in note and "tpe" in note
    # issue 35: a DE-ELBo study's page starts with what its best trial learned, the placeholder named as such
    best = study.trials[study.user_attrs[A.BEST_TRIAL]]
    first = note.split("\n")[2]
    assert first.startswith(f"**Learned by the best trial** (#{best.number}, lr = {best.params['lr']:g}): weight decay")
    assert (
        f"**{best.user_attrs[A.LEARNED_WEIGHT_DECAY]:.3g}**" in first and "lambda" in first and "placeholder" in first
    )
    tpe = optuna.load_study(study_name=TINY_STUDIES[1], storage=storage)
    assert "Learned by the best trial" not in study_note(tpe, results)  # MAP trials learn nothing


def test_saving_without_optuna_dashboard_says_how_to_install(
    tiny_compare_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # makes `import optuna_dashboard` fail
    with pytest.raises(MissingDependency, match=r"pip install 'optuna-deelbo\[dashboard\]'"):
        save_storage_to_dashboard(optuna.storages.RDBStorage(tiny_compare_url))
