"""Put the report's figures and a note into each study, for optuna-dashboard to show; serve it.

optuna-dashboard is optional (``pip install "optuna-deelbo[dashboard]"``) and imported only
when these functions run. What they write lives in the storage (study system attrs), so
``optuna-dashboard <storage URL>`` shows it on each study's page: the note at the top, the
figures below it. Saving again replaces both (fixed graph ids, a new note version).
:func:`serve_dashboard` runs the real ``optuna-dashboard`` server in a child process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from types import ModuleType

import optuna

from optuna_deelbo._errors import MissingDependency
from optuna_deelbo.report._figures import accuracy_vs_time_figure, trajectory_figure
from optuna_deelbo.report._tables import deelbo_verdict, load_comparisons
from optuna_deelbo.tuning import attrs as A
from optuna_deelbo.tuning._study import StrategyResult
from optuna_deelbo.tuning.attrs import learned_params

__all__ = [
    "ACCURACY_GRAPH_ID",
    "TRAJECTORY_GRAPH_ID",
    "dashboard_available",
    "save_storage_to_dashboard",
    "save_to_dashboard",
    "serve_dashboard",
    "study_note",
]

#: Graph ids of the saved figures (valid HTML ids; saving again overwrites them).
ACCURACY_GRAPH_ID = "deelbo-accuracy-vs-time"
TRAJECTORY_GRAPH_ID = "deelbo-trajectories"

_HOW_TO_READ = {
    "selection_score": (
        "Each trial trains on all N with the DE-ELBo; its **value is the score of the selection rule** named "
        f"in the `{A.SELECT_RULE}` user attr (by default `train-loss`, the final training DE-ELBo loss; lower wins; "
        "no validation split). The weight decay is not searched: it is learned, see the "
        f"`{A.LEARNED_LAMBDA}`, `{A.LEARNED_TAU}`, `{A.LEARNED_SIGMA}`, `{A.LEARNED_WEIGHT_DECAY}` user attrs; "
        "how they moved during training is the trajectories figure (the numbers: the trial system attr "
        f"`{A.LEARNED_TRACE}`, `[[step, lambda, tau, sigma], ...]`). `{A.TEST_ACCURACY}` per trial is reporting only."
    ),
    "val_nll": (
        "Each trial trains MAP on 80 % of the N examples; its **value is the validation NLL** on the other "
        f"20 % (nats per example, lower wins); `{A.VAL_ACCURACY}` beside it. The winner is retrained on all N "
        f"and only that model is tested (study attrs `{A.TEST_ACCURACY}`, `{A.TIME_RETRAIN_S}`)."
    ),
}


def dashboard_available() -> bool:
    """Whether optuna-dashboard can be imported."""
    return importlib.util.find_spec("optuna_dashboard") is not None


def _dashboard() -> ModuleType:
    try:
        return importlib.import_module("optuna_dashboard")
    except ImportError as exc:
        raise MissingDependency(
            "optuna-dashboard is not installed; pip install 'optuna-deelbo[dashboard]' (or optuna-dashboard)"
        ) from exc


def _learned_lines(study: optuna.study.Study) -> list[str]:
    """The best trial's learned values, first thing on a DE-ELBo study's page (none for MAP studies)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    best = trials.get(study.user_attrs.get(A.BEST_TRIAL, -1))
    if best is None or A.LEARNED_WEIGHT_DECAY not in best.user_attrs:
        return []
    got = best.user_attrs
    variances = ", ".join(
        f"{label} {got[key]:.3g}"
        for label, key in (("lambda", A.LEARNED_LAMBDA), ("tau", A.LEARNED_TAU), ("sigma", A.LEARNED_SIGMA))
        if key in got
    )
    shown = {k: v for k, v in learned_params(best).items() if k != "weight_decay"}
    placeholder = best.params.get("weight_decay")
    return [
        f"**Learned by the best trial** (#{best.number}, {', '.join(f'{k} = {v:g}' for k, v in shown.items())}): "
        f"weight decay **{got[A.LEARNED_WEIGHT_DECAY]:.3g}** ({variances}). "
        + (
            f"The `weight_decay` of the Best Trial card and the params column ({placeholder:g}) is the placeholder "
            "the sampler handed the objective, not a value any trial trained with."
            if isinstance(placeholder, float)
            else ""
        ),
        "",
    ]


def study_note(study: optuna.study.Study, comparison: Sequence[StrategyResult]) -> str:
    """The markdown note of one strategy study: what it is, how to read it, its result and verdict."""
    attrs = study.user_attrs
    task = attrs.get(A.TASK) or {}
    metric = (study.metric_names or ["value"])[0]
    this = next((r for r in comparison if r.study_name == study.study_name), None)
    lines = [f"## {attrs.get(A.STRATEGY, '?')} on {task.get('name', '?')}", "", *_learned_lines(study)]
    lines += [
        f"**What this study is:** {attrs.get(A.DESCRIPTION, 'a strategy run')}. Task `{task.get('name', '?')}`: "
        f"N = {task.get('N', '?')} training examples, prior `{task.get('prior', '?')}`, "
        f"{task.get('steps', '?')} SGD steps per configuration. One of {len(comparison)} strategies "
        f"compared on this task ({', '.join(r.strategy for r in comparison)}): same data, same steps.",
        "",
        f"**How to read it:** {_HOW_TO_READ.get(metric, f'the objective value is `{metric}` (lower wins).')} "
        f"`{A.TIME_TRIAL_S}` is each trial's wall-clock; the study attrs `{A.TIME_TUNING_S}`, `{A.TIME_RETRAIN_S}`, "
        f"`{A.TIME_TOTAL_S}` are the strategy's cost.",
    ]
    if any(A.series(t, A.LAMBDA_TRAJECTORY) for t in study.get_trials(deepcopy=False)):
        lines += [
            "",
            "The weight decay follows a schedule (the trajectories figure; the numbers: the trial system attr "
            f"`{A.LAMBDA_TRAJECTORY}`, `[[first step, value], ...]`).",
        ]
    if this is not None:
        acc = "n/a" if math.isnan(this.test_accuracy) else f"{100 * this.test_accuracy:.1f}%"
        lines += [
            "",
            f"**Result:** test accuracy {acc}, total {this.total_s:.1f} s (tuning {this.tuning_s:.1f} s + "
            f"retrain {this.retrain_s:.1f} s), chosen {this.best_params}.",
        ]
    lines += [
        "",
        f"**Verdict on this task:** {deelbo_verdict(comparison)}.",
        "",
        "**Figures below:** *accuracy vs time* puts every strategy of this comparison on one plot "
        "(test accuracy against total wall-clock, log axis); *trajectories* (where present) shows the "
        "learned lambda / tau / sigma or the weight-decay schedule over training, the chosen trial thicker.",
    ]
    return "\n".join(lines)


def save_to_dashboard(storage: optuna.storages.BaseStorage, results: Sequence[StrategyResult]) -> list[str]:
    """Save the accuracy-vs-time figure, the trajectory figure (if any) and a note into each result's study.

    Args:
        results: one comparison (every strategy run on one task), as returned by ``run_compare``.

    Returns:
        The study names written.

    Raises:
        MissingDependency: optuna-dashboard is not installed.
    """
    dash = _dashboard()
    accuracy = accuracy_vs_time_figure(results)
    written = []
    for r in results:
        study = optuna.load_study(study_name=r.study_name, storage=storage)
        dash.save_plotly_graph_object(study, accuracy, graph_object_id=ACCURACY_GRAPH_ID)
        figure = trajectory_figure(study)
        if figure is not None:
            dash.save_plotly_graph_object(study, figure, graph_object_id=TRAJECTORY_GRAPH_ID)
        dash.save_note(study, study_note(study, results))
        written.append(r.study_name)
    return written


def save_storage_to_dashboard(storage: optuna.storages.BaseStorage) -> list[str]:
    """:func:`save_to_dashboard` for every comparison in ``storage`` (rebuilt from the studies alone)."""
    _dashboard()
    written: list[str] = []
    for results in load_comparisons(storage).values():
        written += save_to_dashboard(storage, results)
    return written


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_dashboard(
    storage_url: str, *, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 30.0
) -> Iterator[str]:
    """Run ``optuna-dashboard storage_url`` until the block ends; yields its base URL once it answers.

    Args:
        host: interface to bind (loopback by default).
        port: TCP port; a free one by default.
        timeout_s: how long to wait for ``/api/studies`` to answer.

    Raises:
        MissingDependency: the ``optuna-dashboard`` command is not installed.
        RuntimeError: the server exited or did not answer within ``timeout_s`` (its output is in the message).
    """
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        raise MissingDependency("the optuna-dashboard command is not installed; pip install 'optuna-deelbo[dashboard]'")
    port = port or _free_port(host)
    base = f"http://{host}:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen([exe, storage_url, "--host", host, "--port", str(port)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/api/studies", timeout=5):
                        break
                except (urllib.error.URLError, ConnectionError) as exc:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        output = log.read().decode(errors="replace").strip()[-2000:]
                        state = f"exited with status {server.returncode}" if server.poll() is not None else "timed out"
                        raise RuntimeError(f"optuna-dashboard {state} at {base}: {output or exc}") from exc
                    time.sleep(0.3)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
