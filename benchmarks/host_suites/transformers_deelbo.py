"""pytest plugin: ``transformers.Trainer`` is :class:`DEELBoTrainer` in a run of Hugging Face's own Trainer tests.

Loaded by benchmarks/host_suites.py (``-p transformers_deelbo``) before the tests are collected, so their
``from transformers import Trainer`` gets the DE-ELBo trainer; the only adaptation. Its defaults stand (L2-SP,
the whole model as the body, N from ``len(train_dataset)``). The session's summary says how many DE-ELBo
trainers were built and how many of them trained (a run where none did proves nothing).
"""

from __future__ import annotations

import sys
from typing import Any

from optuna_deelbo.integrations.transformers import DEELBoTrainer

COUNTS = {"built": 0, "trained": 0}


class _CountedDEELBoTrainer(DEELBoTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        COUNTS["built"] += 1
        super().__init__(*args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        COUNTS["trained"] += 1
        return super().train(*args, **kwargs)


_CountedDEELBoTrainer.__name__ = _CountedDEELBoTrainer.__qualname__ = "Trainer"
# Resolving ``transformers.Trainer`` (above, for the subclass) put a new module object in sys.modules: set the
# name on the one that ``from transformers import Trainer`` reads now.
sys.modules["transformers"].Trainer = _CountedDEELBoTrainer  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"deelbo-host-suite: DEELBoTrainer built {COUNTS['built']}, trained {COUNTS['trained']}"
    )
