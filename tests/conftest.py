"""Shared test settings: the hypothesis profile (derandomized unless asked to explore), seeded global RNGs,
where the real CIFAR-10 JPEG archives are (tests needing them skip when absent),
one CPU thread for small workloads, one tiny ``compare`` run shared by the dashboard and report tests,
Debian's WordNet for the text tests, and a real PostgreSQL server (Debian's binaries) with a fresh database per test."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _hypothesis_profiles import load as load_hypothesis_profile

# Property tests and fuzzing: derandomized for everyone by default; HYPOTHESIS_PROFILE=explore on request
# (tests/_hypothesis_profiles.py). Every test starts from the same global RNG state (seed_global_rngs).
load_hypothesis_profile()

# Under pytest-xdist (the README's command: one worker per core, at most 4) each worker gets its share of the
# cores as torch threads: 2 workers x torch's default pool on 2 cores would run 4 busy threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

#: The offline CIFAR-10 archives: ``$OPTUNA_DEELBO_DATA_DIR``, else ``shared/data`` next to the repository.
_NEXT_TO_REPO = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_DATA_DIR = Path(os.environ.get("OPTUNA_DEELBO_DATA_DIR") or _NEXT_TO_REPO)


_REPO = Path(__file__).resolve().parents[1]
#: What a test run may leave in the checkout (caches, the build's metadata, the venv).
_ALLOWED_LITTER = {".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache", "__pycache__", ".venv"}


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean() -> Iterator[None]:
    """Fail the run if a test wrote files into the repository's top folder (relative paths must go to tmp)."""
    before = {p.name for p in _REPO.iterdir()}
    yield
    new = sorted({p.name for p in _REPO.iterdir()} - before - _ALLOWED_LITTER)
    assert not new, f"tests left files in the checkout: {new}"


@pytest.fixture(autouse=True)
def seed_global_rngs() -> None:
    """Each test starts from the same state of Python's, NumPy's and torch's global generators.

    A test that draws from them (``torch.randn`` without a generator, a model's initial weights)
    then sees the same numbers whichever tests ran before it, alone or in any order.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_cpu_thread() -> Iterator[None]:
    """Run a module's small CPU workloads on one intra-op thread, then restore the setting.

    On a small, shared CPU (2 cores with another job running) torch's default thread pool
    makes tiny convolutions up to 30x slower than one thread does. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_cpu_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: The study names the tiny compare run below creates.
TINY_STUDIES = ("digits-N50-seed0/l2-sp/deelbo", "digits-N50-seed0/l2-sp/tpe")


@pytest.fixture(scope="session")
def tiny_compare_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SQLite URL of a real ``optuna-deelbo compare`` run: digits N = 50, deelbo (4 trials) + tpe (2), 10 steps.

    ``compare`` saves its figures and notes into the studies when optuna-dashboard is installed.
    Treat the storage as read-only (several test modules share it).
    """
    from optuna_deelbo.cli import main

    url = f"sqlite:///{tmp_path_factory.mktemp('tiny-compare') / 'deelbo.db'}"
    argv = ["compare", "--storage", url, "--strategies", "deelbo,tpe", "--tpe-trials", "2", "--report", ""]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*argv, "--steps", "10", "--pretrain-steps", "10", "--n-train", "50", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(previous)
    return url


@pytest.fixture(scope="session")
def wordnet_dir() -> Path:
    """Debian's WordNet 3.0 (``apt-get install wordnet-base``); skipped when absent, unless ``$CI`` is set."""
    from optuna_deelbo.data import WORDNET_DIR

    if not (WORDNET_DIR / "data.noun").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI is set but WordNet is not installed (apt-get install wordnet-base)")
        pytest.skip("WordNet not found under /usr/share/wordnet (apt-get install wordnet-base)")
    return WORDNET_DIR


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server started for this session in a temp dir (see tests/_postgres.py).

    Skips when Debian's PostgreSQL binaries are absent, unless ``$CI`` is set: CI installs
    them (``.ci/run``), so there a missing server is an error, not a skip.
    """
    from _postgres import find_bin_dir, postgres_server

    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    with postgres_server(bin_dir) as server:
        yield server.url


@pytest.fixture
def postgres_url(postgres_server_url: str, request: pytest.FixtureRequest) -> str:
    """``postgresql+psycopg://`` URL of a new, empty database on :func:`postgres_server_url`, one per test."""
    import re

    import psycopg

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + f"_{os.getpid()}"
    server = postgres_server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def tiny_digits_task() -> object:
    """A digits task small enough to build in a second (N = 50, 4 steps of 16, 10 pretraining steps); read-only."""
    import optuna_deelbo as od

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return od.digits_task(50, steps=4, batch_size=16, pretrain_steps=10)[0]
    finally:
        torch.set_num_threads(previous)
