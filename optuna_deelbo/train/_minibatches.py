"""``Minibatches``: the minibatch order of a step-based training run, seeded and resumable.

Every epoch is a fresh permutation of ``range(n)`` drawn from the object's own generator; the
ragged last batch is dropped, so every step sees ``batch_size`` examples. The training loop
draws its batches from here, and so can a user's own loop to reproduce
:func:`optuna_deelbo.fit` exactly (the README's own-loop example does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from optuna_deelbo._validation import positive_int

__all__ = ["Minibatches"]


class Minibatches:
    """Index batches over ``n`` examples, a new permutation each epoch.

    Args:
        n: number of examples (> 0).
        batch_size: examples per batch (> 0); capped at ``n``.
        seed: seeds the permutations (its own generator; the global RNG is not touched).
        device: where the indices live (that of the data they index).

    Example:
        .. code-block:: python

            batches = Minibatches(len(x), batch_size=64, seed=0)
            for step in range(300):
                idx = batches.next()
                loss = criterion(model(x[idx]), y[idx])
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, device: torch.device | str | None = None) -> None:
        self.n = positive_int(n, "number of examples n")
        self.batch_size = min(positive_int(batch_size, "batch_size"), self.n)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.order = self._permutation()
        self.cursor = 0

    @property
    def per_epoch(self) -> int:
        """Steps per epoch, ``n // batch_size``."""
        return self.n // self.batch_size

    def _permutation(self) -> Tensor:
        return torch.randperm(self.n, generator=self.generator, device=self.device)

    def next(self) -> Tensor:
        """The next batch's indices, shape ``(batch_size,)`` (int64, on ``device``)."""
        if self.cursor + self.batch_size > self.n:
            self.order = self._permutation()
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.next()

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation and position (CPU tensors)."""
        cpu = torch.device("cpu")
        return {"perm": self.generator.get_state().to(cpu), "order": self.order.to(cpu), "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s position."""
        self.generator.set_state(state["perm"])
        self.order = state["order"].to(self.device)
        self.cursor = int(state["cursor"])
