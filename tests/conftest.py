"""Shared test settings: where the real CIFAR-10 JPEG archives are (tests needing them skip when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

#: The offline CIFAR-10 archives: ``$OPTUNA_DEELBO_DATA_DIR``, else ``shared/data`` next to the repository.
_NEXT_TO_REPO = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_DATA_DIR = Path(os.environ.get("OPTUNA_DEELBO_DATA_DIR") or _NEXT_TO_REPO)


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
