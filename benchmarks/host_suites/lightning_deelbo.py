"""pytest plugin: every ``lightning.pytorch.Trainer`` the host's tests build gets a :class:`DEELBoCallback`.

Loaded by benchmarks/host_suites.py (``-p lightning_deelbo``) into a run of Lightning's own tests; it is
the only adaptation. The callback is appended to the Trainer's callbacks unless the test passed one;
``n_train`` is 64, the length of Lightning's ``BoringModel`` dataset (a wrong N only rescales kappa).
The session's summary says how many callbacks were attached and how many fits they started (a run
where none did proves nothing).
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl

from optuna_deelbo.integrations.lightning import DEELBoCallback

#: N for every callback: ``RandomDataset(32, 64)``, the dataset of Lightning's BoringModel.
N_TRAIN = 64

COUNTS = {"attached": 0, "fits": 0}


class _CountedDEELBoCallback(DEELBoCallback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        COUNTS["fits"] += 1
        super().on_fit_start(trainer, pl_module)


_original_init = pl.Trainer.__init__


@functools.wraps(_original_init)
def _init_with_deelbo(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
    callbacks = kwargs.get("callbacks")
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    if not any(isinstance(c, DEELBoCallback) for c in callbacks):
        callbacks = [*callbacks, _CountedDEELBoCallback(n_train=N_TRAIN, prior="l2-sp")]
        COUNTS["attached"] += 1
    kwargs["callbacks"] = callbacks
    _original_init(self, *args, **kwargs)


pl.Trainer.__init__ = _init_with_deelbo  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"deelbo-host-suite: DEELBoCallback attached {COUNTS['attached']}, fits started {COUNTS['fits']}"
    )
