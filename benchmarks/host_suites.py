"""The host libraries' own tests on the integrations: Lightning's with the DE-ELBo callback, HF's with DEELBoTrainer.

Usage: python benchmarks/host_suites.py --lightning-repo PATH [--lightning-ref 2.6.5]
                                        --transformers-tests PATH [--only lightning|transformers]

Each suite runs twice in a temporary folder, once as its authors wrote it and once with the plugin of
benchmarks/host_suites/ loaded (the only adaptation: Lightning's Trainer gets a ``DEELBoCallback``
appended, ``transformers.Trainer`` is ``DEELBoTrainer``), and the outcomes are compared test by test.
A test that passes plainly and fails with the DE-ELBo is either one of :data:`BY_DESIGN` (the docs'
"Differences from the host library" names each) or a defect: the run exits 1 on any such defect, and
also when the plugin attached to no training run (a comparison that proves nothing).

Sources (never copied into this repository; nothing is downloaded):
  --lightning-repo      a git clone of github.com/Lightning-AI/pytorch-lightning; the tests of
                        --lightning-ref (default: the installed version's tag, else the newest 2.x tag
                        below it) are exported with ``git archive``: tests_pytorch/callbacks and
                        tests_pytorch/checkpointing (minus test_legacy_checkpoints.py, which reads
                        checkpoints of old releases downloaded by a script).
  --transformers-tests  a transformers checkout's ``tests/`` folder (``git clone --depth 1 --branch
                        v<installed> github.com/huggingface/transformers``); the files of
                        :data:`TRANSFORMERS_FILES` that it holds are run.

Needs, beside ``pip install -e ".[lightning,transformers,test]"``: cloudpickle, psutil,
pytest-timeout, jsonargparse[signatures] (Lightning's test requirements).
Writes benchmarks/results/host-suites.md; each pytest run's output goes to a log file in the work
folder (printed at the start; ``--keep`` keeps the folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS, RunRecord

#: benchmarks/host_suites/, the two pytest plugins.
PLUGINS = Path(__file__).resolve().parent / "host_suites"

#: Lightning's test folders run (relative to the exported ``tests/``), and what is left out of them.
LIGHTNING_PATHS = ("tests_pytorch/callbacks", "tests_pytorch/checkpointing")
LIGHTNING_IGNORE = ("tests_pytorch/checkpointing/test_legacy_checkpoints.py",)
#: Lightning's pytest settings (its pyproject.toml's [tool.pytest.ini_options], less coverage and doctests); each
#: test runs once (pytest-rerunfailures off: a rerun until it passes would hide a difference).
LIGHTNING_INI = """[pytest]
addopts = --strict-markers --disable-pytest-warnings -p no:cacheprovider -p no:rerunfailures
markers =
    cloud: Run the cloud tests for example
    flaky: pytest-rerunfailures' marker (the plugin is off: each test runs once)
xfail_strict = true
filterwarnings =
    error::FutureWarning
    ignore::FutureWarning:onnxscript
    ignore:You are using `torch.load` with `weights_only=False`.*:FutureWarning
    ignore::FutureWarning:torch.distributed.algorithms.ddp_comm_hooks
    ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated.*:FutureWarning
"""

#: Hugging Face's Trainer test files run, relative to the checkout's ``tests/`` (those present are run).
TRANSFORMERS_FILES = (
    "trainer/test_trainer_callback.py",
    "trainer/test_trainer_checkpointing.py",
    "trainer/test_trainer_hyperparameter.py",
)

#: Tests that fail with the DE-ELBo by design: (suite, test-id regex, failure-message regex, the reason as the docs
#: states it). A failure is by design when both regexes match; anything else that passes as written is a defect.
BY_DESIGN: tuple[tuple[str, str, str, str], ...] = (
    (
        "transformers",
        r"TrainerHyperParameterMultiObjectOptunaIntegrationTest",
        r"selection score is one number",
        "multi-objective hyperparameter_search: the DE-ELBo selection score is one number; "
        "DEELBoTrainer(selection='eval') with a compute_objective is asked for (ConfigError)",
    ),
    ("lightning", r".", r"needs automatic optimisation", "manual optimisation is refused (ConfigError)"),
    (
        "lightning",
        r"test_finetuning_callback::|test_pruning::",
        r".",
        "BaseFinetuning / ModelPruning are refused at fit start: the test's fit raises before what it checks "
        "(a warning it expects, a DDP child's result)",
    ),
    (
        "lightning",
        r".",
        r"cannot train with (\w+: it unfreezes|ModelPruning)",
        "BaseFinetuning / BackboneFinetuning and ModelPruning are refused at fit start (they change the weights "
        "the posterior covers mid-fit)",
    ),
    ("lightning", r".", r"applies weight_decay=", "an optimizer with its own weight decay is refused (the KL is it)"),
    (
        "lightning",
        r"test_lr_monitor|test_stochastic_weight_avg::test_swa_multiple_lrs",
        r".",
        "the optimizer has one more group (deelbo-sigma): LearningRateMonitor logs lr-X/pg1 and lr-X/deelbo-sigma "
        "where it logged lr-X, and a per-group list (SWA's swa_lr) needs one more entry",
    ),
    (
        "lightning",
        r"test_throughput_monitor|test_device_stats_monitor::test_device_stats_cpu",
        r"mock_calls|assert \d+ == \d+|call\(metrics|assert False",
        "deelbo/* metrics are logged every step: a logger sees more log_metrics calls (without the stats it checks)",
    ),
    (
        "lightning",
        r"test_spike|test_resume_early_stopping_from_checkpoint",
        r".",
        "callbacks watching the training loss see the DE-ELBo (one posterior draw plus KL / (kappa N)): "
        "SpikeDetection flags, EarlyStopping / ModelCheckpoint(monitor='train_loss') pick other steps",
    ),
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One test's outcome in one run: ``passed``, ``failed``, ``error``, ``skipped``; ``message`` its first line."""

    state: str
    message: str = ""


@dataclasses.dataclass
class SuiteRun:
    """One suite's two runs: outcomes by test id, the plugin's summary line, wall-clock in s."""

    suite: str
    source: str
    plain: dict[str, Outcome]
    deelbo: dict[str, Outcome]
    plugin_line: str
    plain_s: float
    deelbo_s: float


def read_junit(path: Path) -> dict[str, Outcome]:
    """Outcomes by test id (``classname::name``) from a pytest ``--junitxml`` file."""
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        state, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                state = {"failure": "failed"}.get(kind, kind)
                text = element.get("message") or element.text or ""
                message = text.strip().splitlines()[0][:300] if text.strip() else ""
                break
        outcomes[test_id] = Outcome(state, message)
    return outcomes


def _pytest(
    cwd: Path, targets: Sequence[str], junit: Path, log: Path, plugin: str | None, extra: Sequence[str]
) -> float:
    """Run pytest on ``targets`` in ``cwd`` (niced, one torch thread), output to ``log``; returns its seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = ["nice", "-n", "5", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
    cmd += ["--junitxml", str(junit), "--timeout", "600", *extra]
    if plugin is not None:
        cmd += ["-p", plugin]
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if not junit.exists():
        raise SystemExit(f"host_suites: pytest wrote no results in {cwd}; see {log}")
    return time.perf_counter() - started


def _plugin_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("deelbo-host-suite:")]
    if not lines:
        raise SystemExit(f"host_suites: the plugin did not load (no summary line in {log})")
    return lines[-1].removeprefix("deelbo-host-suite:").strip()


def _lightning_ref(repo: Path, ref: str | None) -> str:
    """``ref``, else the installed Lightning's tag, else the newest tag of its minor series below it."""
    if ref is not None:
        return ref
    from lightning import __version__ as installed

    tags = subprocess.run(["git", "tag"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    if installed in tags:
        return installed
    minor = ".".join(installed.split(".")[:2])

    def key(tag: str) -> tuple[int, ...]:
        return tuple(int(p) for p in tag.split("."))

    below = [t for t in tags if re.fullmatch(rf"{re.escape(minor)}\.\d+", t) and key(t) <= key(installed)]
    if not below:
        raise SystemExit(f"host_suites: no tag of Lightning {minor}.x in {repo}; pass --lightning-ref")
    return max(below, key=key)


def run_lightning(repo: Path, ref: str | None, work: Path) -> SuiteRun:
    """Export Lightning's callback and checkpoint tests at ``ref`` into ``work`` and run them twice."""
    ref = _lightning_ref(repo, ref)
    archive = work / "lightning-tests.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", ref, "tests/tests_pytorch"], cwd=repo, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(work / "lightning", filter="data")
    tests = work / "lightning" / "tests"
    (tests / "pytest.ini").write_text(LIGHTNING_INI)
    extra = [f"--ignore={p}" for p in LIGHTNING_IGNORE]
    runs = {}
    for name, plugin in (("plain", None), ("deelbo", "lightning_deelbo")):
        junit, log = work / f"lightning-{name}.xml", work / f"lightning-{name}.log"
        print(f"lightning ({name}): pytest {' '.join(LIGHTNING_PATHS)}, log {log}", flush=True)
        runs[name] = (_pytest(tests, LIGHTNING_PATHS, junit, log, plugin, extra), read_junit(junit), log)
    return SuiteRun(
        "lightning",
        f"Lightning-AI/pytorch-lightning {ref}: {', '.join(LIGHTNING_PATHS)}",
        runs["plain"][1],
        runs["deelbo"][1],
        _plugin_line(runs["deelbo"][2]),
        runs["plain"][0],
        runs["deelbo"][0],
    )


def run_transformers(tests_dir: Path, work: Path, note: str = "") -> SuiteRun:
    """Copy the Trainer tests of ``tests_dir`` (a transformers checkout's ``tests/``) into ``work``; run them twice."""
    present = [f for f in TRANSFORMERS_FILES if (tests_dir / f).is_file()]
    if not present:
        raise SystemExit(f"host_suites: none of {', '.join(TRANSFORMERS_FILES)} under {tests_dir}")
    copy = work / "transformers" / "tests"
    shutil.copytree(tests_dir / "trainer", copy / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    for package in (copy, copy / "trainer"):
        (package / "__init__.py").touch()
    runs = {}
    for name, plugin in (("plain", None), ("deelbo", "transformers_deelbo")):
        junit, log = work / f"transformers-{name}.xml", work / f"transformers-{name}.log"
        print(f"transformers ({name}): pytest {' '.join(present)}, log {log}", flush=True)
        runs[name] = (_pytest(copy, present, junit, log, plugin, ()), read_junit(junit), log)
    import transformers

    return SuiteRun(
        "transformers",
        f"huggingface/transformers tests/ at {tests_dir} (installed {transformers.__version__}): {', '.join(present)}"
        + (f" ({note})" if note else ""),
        runs["plain"][1],
        runs["deelbo"][1],
        _plugin_line(runs["deelbo"][2]),
        runs["plain"][0],
        runs["deelbo"][0],
    )


def by_design(suite: str, test_id: str, message: str) -> str | None:
    """The documented reason ``test_id`` fails with the DE-ELBo (its first ``message`` line), or ``None`` (a defect)."""
    for where, test_pattern, message_pattern, reason in BY_DESIGN:
        if where == suite and re.search(test_pattern, test_id) and re.search(message_pattern, message):
            return reason
    return None


def _counts(outcomes: dict[str, Outcome]) -> str:
    states = [o.state for o in outcomes.values()]
    return " / ".join(str(states.count(s)) for s in ("passed", "failed", "error", "skipped"))


def report(runs: Sequence[SuiteRun], record: RunRecord) -> tuple[str, int]:
    """The results markdown and the number of defects (plain pass, DE-ELBo failure, no documented reason)."""
    lines = ["# The host libraries' own tests on the integrations", "", record.header(), ""]
    lines += [
        "| suite | tests | plain: passed / failed / error / skipped | with DE-ELBo | plain s | DE-ELBo s | plugin |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(
            f"| {run.suite} | {len(run.plain)} | {_counts(run.plain)} | {_counts(run.deelbo)} | "
            f"{run.plain_s:.0f} | {run.deelbo_s:.0f} | {run.plugin_line} |"
        )
    defects = 0
    for run in runs:
        lines += ["", f"## {run.suite}", "", f"Source: {run.source}.", ""]
        broken = sorted(
            t for t, o in run.plain.items() if o.state == "passed" and run.deelbo.get(t, o).state in ("failed", "error")
        )
        fixed = sorted(
            t for t, o in run.plain.items() if o.state in ("failed", "error") and run.deelbo.get(t, o).state == "passed"
        )
        plain_failures = sorted(t for t, o in run.plain.items() if o.state in ("failed", "error"))
        if not broken:
            lines.append("Every test that passes as its authors wrote it passes with the DE-ELBo.")
        else:
            lines += [
                "Passes as written, fails with the DE-ELBo:",
                "",
                "| test | by design? | message |",
                "|---|---|---|",
            ]
            for test_id in broken:
                reason = by_design(run.suite, test_id, run.deelbo[test_id].message)
                defects += reason is None
                message = run.deelbo[test_id].message.replace("|", "\\|")
                lines.append(f"| `{test_id}` | {reason or '**no: a defect**'} | {message} |")
        if plain_failures:
            lines += [
                "",
                "Fail as written too (the environment: no network, no GPU, ...), left out of the comparison:",
                "",
            ]
            lines += [f"- `{t}`: {run.plain[t].message}" for t in plain_failures]
        if fixed:
            lines += ["", "Fail as written, pass with the DE-ELBo:", ""] + [f"- `{t}`" for t in fixed]
    return "\n".join(lines) + "\n", defects


def _plugin_used(run: SuiteRun) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", run.plugin_line)]
    return bool(numbers) and min(numbers) > 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lightning-repo", type=Path, default=os.environ.get("OPTUNA_DEELBO_LIGHTNING_REPO"))
    parser.add_argument("--lightning-ref", default=None)
    parser.add_argument("--transformers-tests", type=Path, default=os.environ.get("OPTUNA_DEELBO_TRANSFORMERS_TESTS"))
    parser.add_argument("--only", choices=("lightning", "transformers"), default=None)
    parser.add_argument(
        "--transformers-note",
        default=os.environ.get("OPTUNA_DEELBO_TRANSFORMERS_NOTE", ""),
        help="said beside the transformers source in the results (e.g. how the test files were obtained)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "host-suites.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (the tests, logs, junit files)")
    args = parser.parse_args(argv)
    wanted = [args.only] if args.only else ["lightning", "transformers"]
    missing = {
        "lightning": (
            "--lightning-repo",
            args.lightning_repo,
            "git clone https://github.com/Lightning-AI/pytorch-lightning",
        ),
        "transformers": (
            "--transformers-tests",
            args.transformers_tests,
            "git clone --depth 1 https://github.com/huggingface/transformers (pass its tests/ folder)",
        ),
    }
    for suite in wanted:
        option, value, how = missing[suite]
        if value is None or not Path(value).is_dir():
            parser.error(f"{option}: a folder is needed for the {suite} suite ({how}); got {value}")
    record = RunRecord.start()
    work = Path(tempfile.mkdtemp(prefix="host-suites-"))
    print(f"host_suites: work folder {work}", flush=True)
    try:
        runs = []
        if "lightning" in wanted:
            runs.append(run_lightning(args.lightning_repo.resolve(), args.lightning_ref, work))
        if "transformers" in wanted:
            runs.append(run_transformers(args.transformers_tests.resolve(), work, args.transformers_note))
        text, defects = report(runs, record)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        unused = [r.suite for r in runs if not _plugin_used(r)]
        if unused:
            print(f"host_suites: the plugin trained nothing in {', '.join(unused)}: the comparison proves nothing")
            return 1
        return 1 if defects else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
