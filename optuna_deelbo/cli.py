"""``optuna-deelbo`` console script: ``compare`` runs every strategy on one task; ``report`` rebuilds the report;
``compare --plan-only`` / ``worker`` / ``finish`` split one search over many processes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import optuna
import torch

from optuna_deelbo import __version__
from optuna_deelbo._errors import ConfigError, MissingDependency, SearchFailed, StorageError, TrainingDiverged
from optuna_deelbo._interrupts import interruptible
from optuna_deelbo._validation import LEARNING_RATE_RANGE, MAX_SEED, shown
from optuna_deelbo.bayes import PRIOR_NAMES, RECIPE_NAMES
from optuna_deelbo.models import BACKBONE_NAMES
from optuna_deelbo.report import (
    dashboard_available,
    results_table,
    save_storage_to_dashboard,
    save_to_dashboard,
    write_html_report,
    write_storage_report,
)
from optuna_deelbo.task import DATASET_NAMES, BuiltinTask
from optuna_deelbo.task._stored import dataset_defaults
from optuna_deelbo.train import resolve_device
from optuna_deelbo.tuning import DEFAULT_STORAGE, attrs, compare, learned_params, open_storage
from optuna_deelbo.tuning._checkpoints import default_artifacts_dir
from optuna_deelbo.tuning._study import parse_strategies
from optuna_deelbo.tuning.strategies import BATCHED_MODES, DEFAULT_STRATEGIES, STRATEGY_NAMES, check_learning_rates
from optuna_deelbo.tuning.workers import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_S,
    finish_planned_study,
    plan_compare,
    run_worker,
    serve_grpc_proxy,
)

__all__ = ["build_parser", "main"]


#: Upper bound of every count option (steps, batch size, trials, threads, seconds...): larger values
#: are typos, not budgets, and would run for days before anything failed.
MAX_COUNT = 10_000_000
#: The workers' checkpoint interval (steps) when not given.
DEFAULT_CHECKPOINT_EVERY = 50


def _defaults_help(setting: str) -> str:
    """Each dataset's default of one task setting, read off its factory: ``"digits 100, cifar10-jpeg / cifar10 50"``."""
    by_value: dict[object, list[str]] = {}
    for name in DATASET_NAMES:
        if setting in (defaults := dataset_defaults(name)):
            by_value.setdefault(defaults[setting], []).append(name)
    return ", ".join(f"{' / '.join(names)} {value}" for value, names in by_value.items())


def _integer(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {shown(text)}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what}, got {shown(value)}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, MAX_COUNT, f"an integer from 1 to {MAX_COUNT:,}")


def _seed(text: str) -> int:
    return _integer(text, 0, MAX_SEED, f"a seed from 0 to {MAX_SEED}")


def _learning_rates(text: str) -> tuple[float, ...]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
        return check_learning_rates(values)
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"expected a comma list of distinct learning rates from {LEARNING_RATE_RANGE} such as 0.1,0.01, "
            f"got {shown(text)}"
        ) from None


def _retries(text: str) -> int:
    return _integer(text, 0, 1000, "a retry count from 0 to 1000")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``optuna-deelbo compare: error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _add_compare_options(cmp: argparse.ArgumentParser) -> None:
    """The ``compare`` subcommand's options."""
    cmp.add_argument(
        "--strategies",
        default=None,
        help=(
            f"comma list from {','.join(STRATEGY_NAMES)} (default {','.join(DEFAULT_STRATEGIES)}; with --plan-only "
            "without tpe-budget, whose budget is the DE-ELBo search's measured wall-clock: list it after deelbo)"
        ),
    )
    cmp.add_argument("--storage", default=DEFAULT_STORAGE, help="any SQLAlchemy URL (default %(default)s)")
    cmp.add_argument(
        "--dataset",
        default="digits",
        choices=DATASET_NAMES,
        help="default: embedded digits; wordnet-4: text (WordNet definitions, all-MiniLM-L6-v2; extra [text])",
    )
    cmp.add_argument(
        "--data-dir",
        default=None,
        help="cifar10-jpeg: folder with the archives; cifar10: torchvision root; wordnet-4: WordNet folder "
        "(default /usr/share/wordnet)",
    )
    cmp.add_argument(
        "--backbone",
        default=None,
        choices=BACKBONE_NAMES,
        help=f"CIFAR tasks only (default {_defaults_help('backbone')})",
    )
    cmp.add_argument("--cache-dir", default=None, help="decoded images + pretrained checkpoints (CIFAR tasks)")
    cmp.add_argument(
        "--n-train",
        type=_positive_int,
        default=None,
        help=f"target training-set size N (default {_defaults_help('n_train')})",
    )
    cmp.add_argument("--prior", default="l2-sp", choices=PRIOR_NAMES)
    cmp.add_argument(
        "--recipe",
        dest="deelbo",  # BuiltinTask's field
        default="default",
        choices=RECIPE_NAMES,
        help="how DE-ELBo trains and picks its learning rate (docs/guide/recipe.md)",
    )
    cmp.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"SGD steps per configuration (default {_defaults_help('steps')})",
    )
    cmp.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {_defaults_help('batch_size')}")
    cmp.add_argument(
        "--pretrain-steps", type=_positive_int, default=None, help=f"default {_defaults_help('pretrain_steps')}"
    )
    cmp.add_argument(
        "--lrs",
        type=_learning_rates,
        default=None,
        help="comma list: the learning-rate grid of every strategy (default 0.1,0.03,0.01,0.003)",
    )
    cmp.add_argument(
        "--batched",
        default="auto",
        choices=BATCHED_MODES,
        help="train the deelbo strategy's learning rates as one batched model (default auto: on a CUDA device; "
        "deelbo-descend is never batched: each run waits for the ones before; deelbo-halving always is)",
    )
    cmp.add_argument("--tpe-trials", type=_positive_int, default=None, help="default: the grid's trial count")
    cmp.add_argument("--seed", type=_seed, default=0, help="seeds data split, pretraining and training")
    cmp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    cmp.add_argument("--report", default="deelbo-report.html", help="plotly HTML report path ('' to skip)")
    cmp.add_argument("--compile", action="store_true", help="torch.compile each model (pays off on long GPU runs)")
    cmp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cmp.add_argument(
        "--plan-only",
        action="store_true",
        help="create each strategy's study with its trials queued and the built-in task stored, train nothing; "
        "then run `optuna-deelbo worker` (any number) and `optuna-deelbo finish`",
    )
    existing = cmp.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the studies of an earlier, interrupted run with the same settings: only what is missing runs",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="delete studies of the same names in the storage and start again (default: refuse)",
    )
    cmp.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="with --plan-only: steps between checkpoints (default 50)",
    )
    cmp.add_argument(
        "--artifacts", default=None, help="with --plan-only: checkpoint directory (default: next to a SQLite file)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = _Parser(prog="optuna-deelbo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser(
        "compare",
        help="run DE-ELBo, grid search and TPE on a transfer task (default: embedded digits)",
        description="Pretrain on a source task (digits 0-4, or CIFAR-10 classes 0-4), fine-tune on the other "
        "classes with N examples under each strategy (one Optuna study each), and print cost vs accuracy.",
    )
    _add_compare_options(cmp)
    rep = sub.add_parser(
        "report",
        help="rebuild the HTML report from a storage alone (no training)",
        description="Read every finished strategy study in a storage (grouped by task and prior) and write the "
        "HTML report: per comparison the results table, accuracy vs wall-clock, per-strategy trials and trajectories.",
    )
    rep.add_argument("--storage", default=DEFAULT_STORAGE, help="any SQLAlchemy URL (default %(default)s)")
    rep.add_argument("--out", default="deelbo-report.html", help="HTML file to write (default %(default)s)")
    rep.add_argument(
        "--dashboard", action="store_true", help="also save the figures and a note into each study (optuna-dashboard)"
    )
    wrk = sub.add_parser(
        "worker",
        help="work off the queue of a study planned by `compare --plan-only` (run any number, on any machine)",
        description="Join a planned study in a shared storage, rebuild its task from the stored recipe and run "
        "queued trials until none is waiting or running. Heartbeats mark a trial whose worker died as failed; "
        "it is queued again and resumes from its last checkpoint.",
    )
    wrk.add_argument("--storage", required=True, help="the shared SQLAlchemy URL (PostgreSQL for many machines)")
    wrk.add_argument("--study", action="append", required=True, help="study name (repeat for several, in order)")
    wrk.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    wrk.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default %(default)s)")
    wrk.add_argument("--heartbeat-interval", type=_positive_int, default=DEFAULT_HEARTBEAT_S, help="s")
    wrk.add_argument(
        "--grace-period", type=_positive_int, default=DEFAULT_GRACE_PERIOD_S, help="s without heartbeat = dead"
    )
    wrk.add_argument("--max-retry", type=_retries, default=3, help="retries of one configuration after a crash")
    wrk.add_argument("--artifacts", default=None, help="checkpoint directory if mounted elsewhere than planned")
    fin = sub.add_parser(
        "finish",
        help="once the workers have left: pick a planned study's winner, retrain it, store the results",
    )
    fin.add_argument("--storage", required=True, help="the shared SQLAlchemy URL")
    fin.add_argument("--study", action="append", required=True, help="study name (repeat for several)")
    fin.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    prx = sub.add_parser(
        "proxy",
        help="serve a database through Optuna's gRPC storage proxy (workers then use --storage grpc://HOST:PORT)",
        description="Run Optuna's gRPC storage proxy in front of a database until interrupted: workers connect with "
        "--storage grpc://HOST:PORT and hold one gRPC channel each instead of database connections. Use it when "
        "the database's connections are the bottleneck; the proxy carries no heartbeats.",
    )
    prx.add_argument("--storage", required=True, help="the database's SQLAlchemy URL (PostgreSQL for many workers)")
    prx.add_argument("--host", default="localhost", help="address to listen on (default %(default)s)")
    prx.add_argument("--port", type=_port, default=13000, help="port to listen on (default %(default)s)")
    return parser


def _port(text: str) -> int:
    return _integer(text, 1, 65535, "a port from 1 to 65535")


def _if_exists(args: argparse.Namespace) -> str:
    return "resume" if args.resume else "overwrite" if args.overwrite else "error"


#: ``(steps, batch size)`` per configuration when ``--steps`` / ``--batch-size`` are not given.
def _builtin_task(args: argparse.Namespace, *, artifacts: str | None = None) -> BuiltinTask:
    """The task of ``compare`` / ``--plan-only``: each :class:`BuiltinTask` field is the option of the same ``dest``.

    A setting not given is ``None``, the dataset's default (its factory's); checkpoints only with ``artifacts``.
    """
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(BuiltinTask)}
    settings["checkpoint_every"] = (
        (args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY) if artifacts is not None else None
    )
    settings["artifacts"] = artifacts
    return BuiltinTask(**settings)


def _plan(args: argparse.Namespace) -> int:
    storage = open_storage(args.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    artifacts = str(Path(args.artifacts).resolve()) if args.artifacts else str(default_artifacts_dir(args.storage))
    _creatable_dir(artifacts, "checkpoint folder (--artifacts)")
    studies = plan_compare(
        _builtin_task(args, artifacts=artifacts),
        args.strategies,
        storage,
        device=str(resolve_device(args.device)),
        tpe_trials=args.tpe_trials,
        learning_rates=args.lrs,
        if_exists=_if_exists(args),
    )
    for study in studies:
        print(f"planned {study.study_name}: {len(study.trials)} trials queued", flush=True)
    names = " ".join(f"--study {shlex.quote(s.study_name)}" for s in studies)
    print(f"checkpoints: {artifacts}")
    print(f"workers (any number):  optuna-deelbo worker --storage {shlex.quote(args.storage)} {names}")
    print(f"after they have left:  optuna-deelbo finish --storage {shlex.quote(args.storage)} {names}")
    return 0


def _writable_file(path: str, what: str) -> None:
    """Refuse an output file whose folder does not exist or cannot be written, before any work starts."""
    target = Path(path).expanduser().resolve()
    folder = target.parent
    if not folder.is_dir():
        raise ConfigError(f"{what} {shown(path)}: folder {shown(str(folder))} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} {shown(path)}: folder {shown(str(folder))} is not writable")
    try:  # the name itself (too long, a folder of that name, ...): open it once, now, not after the training
        existed = target.exists()
        with open(target, "a"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {shown(path)} cannot be written: {exc.strerror or exc}") from None
    if not existed:
        target.unlink()


def _creatable_dir(path: str, what: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {shown(path)} cannot be created: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {shown(path)} is not writable")


def _refuse_options_that_do_not_apply(args: argparse.Namespace) -> None:
    """A CIFAR-only option on digits, a --plan-only option without it: an error, not silently ignored."""
    if args.dataset == "digits":
        given = [f"--{n.replace('_', '-')}" for n in ("backbone", "data_dir", "cache_dir") if getattr(args, n)]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: for the CIFAR tasks only, not --dataset digits "
                "(the embedded digits task always uses its small CNN); drop them or pick --dataset cifar10-jpeg"
            )
    if args.dataset == "wordnet-4":
        names = ("backbone", "cache_dir", "pretrain_steps")
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n)]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: not for --dataset wordnet-4 (its encoder is the packaged all-MiniLM-L6-v2, "
                "already pretrained); drop them"
            )
    if not args.plan_only:
        given = [f"--{n.replace('_', '-')}" for n in ("checkpoint_every", "artifacts") if getattr(args, n)]
        if given:
            raise ConfigError(f"{', '.join(given)}: for --plan-only runs only (the workers' checkpoints)")
    elif args.batched == "on":
        raise ConfigError(
            "--batched on: workers take planned trials one at a time (the workers are the parallelism); "
            "drop --plan-only to train the DE-ELBo learning rates as one batched model in this process"
        )


def _progress_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One plain line per finished trial (stdout is not a terminal: a log file); learned values, no placeholders.

    Trials the strategy skipped untrained (``deelbo-descend``'s stop, a spent ``tpe-budget``) get one line, at
    the first.
    """
    if trial.user_attrs.get(attrs.SKIPPED):
        trials = study.get_trials(deepcopy=False)
        if not any(t.user_attrs.get(attrs.SKIPPED) for t in trials[: trial.number]):
            left = len(trials) - trial.number
            reason = trial.user_attrs.get(attrs.FAILURE_REASON)
            print(f"{study.study_name}: {reason} ({left} trials skipped)", flush=True)
        return
    learned = {k for k in trial.params if attrs.learned_key(k) in trial.user_attrs}
    params = ", ".join(
        (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}") + (" (learned)" if k in learned else "")
        for k, v in learned_params(trial).items()
    )
    value = f"value {trial.value:.4g}" if trial.value is not None else ""
    if trial.state != optuna.trial.TrialState.COMPLETE:  # a pruned trial's value is its last intermediate one
        value = f"{value} ({trial.state.name.lower()})".strip()
    seconds = (
        f", {(trial.datetime_complete - trial.datetime_start).total_seconds():.1f} s"
        if trial.datetime_complete and trial.datetime_start
        else ""
    )
    planned = len(study.get_trials(deepcopy=False))
    print(f"{study.study_name}: trial {trial.number + 1}/{planned} {params}: {value}{seconds}", flush=True)


def _compare(args: argparse.Namespace) -> int:
    _refuse_options_that_do_not_apply(args)
    if args.report:
        _writable_file(args.report, "--report")
    if args.strategies is None:
        planned = [s for s in DEFAULT_STRATEGIES if s != "tpe-budget"] if args.plan_only else DEFAULT_STRATEGIES
        args.strategies = ",".join(planned)
    if args.plan_only:
        return _plan(args)
    strategies = parse_strategies(args.strategies)
    device = resolve_device(args.device)
    storage = open_storage(args.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"device: {device}; storage: {args.storage}; strategies: {', '.join(strategies)}", flush=True)
    task, pretrain_s = _builtin_task(args).build(str(device), progress=not args.no_progress and sys.stderr.isatty())
    if args.compile:
        task = dataclasses.replace(task, compile=True)
    print(
        f"task {task.name}: source pretraining {pretrain_s:.1f} s (shared by all strategies, not counted below); "
        f"N = {task.n_train}, test = {len(task.test) if task.test else 0}, prior = {task.prior}",
        flush=True,
    )
    start = time.perf_counter()
    results = compare(
        task,
        strategies,
        storage,
        tpe_trials=args.tpe_trials,
        learning_rates=args.lrs,
        show_progress_bar=not args.no_progress and sys.stderr.isatty(),
        if_exists=_if_exists(args),
        on_trial=None if sys.stdout.isatty() else _progress_line,
        batched=args.batched,
    )
    print()
    print(results_table(results))
    print(f"\nall strategies: {time.perf_counter() - start:.1f} s")
    for r in results:
        if r.learned:
            learned = ", ".join(f"{k}={v:.3g}" for k, v in r.learned.items())
            print(f"{r.strategy}: best {r.best_params}; {learned}")
        else:
            print(f"{r.strategy}: best {r.best_params}")
    if args.report:
        path = write_html_report(args.report, results, storage, title=f"optuna-deelbo compare: {task.name}")
        print(f"\nreport: {path.resolve()}")
    if dashboard_available():
        save_to_dashboard(storage, results)
        print(f"dashboard: optuna-dashboard {args.storage}   (figures and a note saved to each study)")
    else:
        print(f"dashboard: pip install optuna-dashboard; optuna-dashboard {args.storage}")
    return 0


def _report(args: argparse.Namespace) -> int:
    _writable_file(args.out, "--out")
    storage = open_storage(args.storage)
    path = write_storage_report(args.out, storage)
    print(f"report: {path.resolve()}")
    if args.dashboard:
        names = save_storage_to_dashboard(storage)
        print(f"dashboard: figures and a note saved to {len(names)} studies; optuna-dashboard {args.storage}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = str(resolve_device(args.device))
    ran = run_worker(
        args.storage,
        args.study,
        device=device,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        max_retry=args.max_retry,
        artifacts=args.artifacts,
    )
    print(f"worker {os.getpid()}: ran {ran} trials; nothing left waiting or running in {', '.join(args.study)}")
    return 0


def _finish(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = str(resolve_device(args.device))
    storage = open_storage(args.storage)
    results = [finish_planned_study(storage, name, device=device) for name in args.study]
    print(results_table(results))
    for r in results:
        print(f"{r.strategy}: best {r.best_params}")
    return 0


def _proxy(args: argparse.Namespace) -> int:
    print(
        f"serving {args.storage} at grpc://{args.host}:{args.port} (Ctrl-C stops); workers: "
        f"optuna-deelbo worker --storage grpc://{args.host}:{args.port} --study NAME",
        flush=True,
    )
    try:
        serve_grpc_proxy(args.storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        print("proxy stopped", flush=True)
    return 0


#: What the CLI reports itself, in one line: Optuna's "trial failed" records for these are dropped.
_ONE_LINE_ERRORS = (KeyboardInterrupt, ConfigError, MissingDependency, StorageError, TrainingDiverged, SearchFailed)


class _NoOneLineErrorTraceback(logging.Filter):
    """Drop Optuna's two "Trial N failed" records (the first with a traceback) for an interrupt or one of
    the package's own errors: the CLI says it in one line."""

    def __init__(self) -> None:
        super().__init__()
        self._dropped: set[str] = set()  # "Trial N failed" of the records dropped so far

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        head = " ".join(message.split()[:3])  # "Trial 7 failed"
        if record.exc_info and isinstance(record.exc_info[1], _ONE_LINE_ERRORS):
            self._dropped.add(head)
            return False
        return not (head in self._dropped and message.startswith(f"{head} with value"))


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """While a command runs, Optuna logs no traceback for the errors the CLI reports in one line."""
    handlers = logging.getLogger("optuna").handlers
    quiet = _NoOneLineErrorTraceback()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _refuse_nul_bytes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """No option value may hold a NUL byte (no path, URL or name can; the OS would raise deep inside)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            parser.error(f"--{name.replace('_', '-')}: the value holds a NUL byte (\\x00)")


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command."""
    if args.command == "compare":
        with interruptible():  # SIGTERM (``kill``, a stopping container) stops the run as Ctrl-C does
            return _compare(args)
    commands = {"report": _report, "worker": _worker, "finish": _finish, "proxy": _proxy}
    return commands[args.command](args)  # argparse admits no other command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 done, 2 bad input, 1 a search whose every trial failed
    (each with a one-line message), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _refuse_nul_bytes(parser, args)
    try:
        with _one_line_errors():
            return _run(args)
    except (ConfigError, MissingDependency, StorageError, TrainingDiverged) as exc:
        print(f"optuna-deelbo: error: {exc}", file=sys.stderr)
        return 2
    except SearchFailed as exc:  # the input was valid, the search found nothing: exit 1
        print(f"optuna-deelbo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command != "compare":
            raise
        words = [w for w in (sys.argv[1:] if argv is None else argv) if w not in ("--resume", "--overwrite")]
        print(
            "optuna-deelbo: interrupted; a running trial was marked failed, the finished ones are kept. "
            f"Continue with: {shlex.join(['optuna-deelbo', *words, '--resume'])}",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
