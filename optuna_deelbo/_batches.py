"""Labelled data in any of the forms users hold it: tensors, a ``Split``, a ``Dataset``, a ``DataLoader``.

Every entry point that reads training or test data (``DEELBo(n_train=...)``,
``DEELBo.selection_score``, ``od.evaluate``, ``od.Split.from_data``, ``od.TaskSpec``) goes
through these three functions, so the forms are accepted (and refused) the same way everywhere:

* ``(x, y)``: a tuple of two tensors with the same first dimension;
* an object with tensor attributes ``x`` and ``y`` (an ``od.Split``);
* a map-style ``torch.utils.data.Dataset`` whose items are ``(input, label, ...)``;
* a ``torch.utils.data.DataLoader`` whose batches are ``(inputs, labels, ...)``; its
  ``dataset`` (when sized) gives the number of examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_int

__all__ = ["count_examples", "labelled_batches", "to_tensors"]

_FORMS = "(x, y) tensors, an od.Split, a torch Dataset of (input, label) items or a DataLoader"


def _tensor_pair(data: object) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` if ``data`` is a pair of tensors or has tensor attributes ``x`` and ``y``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    elif isinstance(getattr(data, "x", None), Tensor) and isinstance(getattr(data, "y", None), Tensor):
        x, y = data.x, data.y  # type: ignore[attr-defined]
    else:
        return None
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"inputs and labels must share their first dimension, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


def count_examples(data: object) -> int:
    """The number of examples in ``data`` (any of the module's forms; a ``DataLoader`` counts its dataset).

    Raises:
        ConfigError: ``data`` is none of the forms, or a loader whose dataset has no length.
    """
    pair = _tensor_pair(data)
    if pair is not None:
        return int(pair[0].shape[0])
    if isinstance(data, DataLoader):
        try:
            return len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(
                "the DataLoader's dataset has no len() (an IterableDataset): pass the number of examples as an int"
            ) from None
    if isinstance(data, Dataset):
        try:
            return len(data)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError("the Dataset has no len(): pass the number of examples as an int") from None
    raise ConfigError(f"expected {_FORMS}, got {type(data).__name__}")


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(t, Tensor) for t in batch[:2]):
        return batch[0], batch[1]
    if isinstance(batch, dict) and isinstance(batch.get("x"), Tensor) and isinstance(batch.get("y"), Tensor):
        return batch["x"], batch["y"]
    raise ConfigError(f"a batch must be an (inputs, labels, ...) tuple of tensors, got {type(batch).__name__}")


def labelled_batches(data: object, batch_size: int = 512) -> Iterator[tuple[Tensor, Tensor]]:
    """``(inputs, labels)`` batches of ``data``, in order; a ``DataLoader``'s batches as it gives them.

    Args:
        data: any of the module's forms.
        batch_size: examples per batch for tensors and datasets (> 0); a loader keeps its own.
    """
    positive_int(batch_size, "batch_size")
    pair = _tensor_pair(data)
    if pair is not None:
        x, y = pair
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if isinstance(data, DataLoader):
        loader: DataLoader[Any] = data
    elif isinstance(data, Dataset):
        count_examples(data)  # a sized, map-style dataset
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise ConfigError(f"expected {_FORMS}, got {type(data).__name__}")
    for batch in loader:
        yield _split_batch(batch)


def to_tensors(data: object, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """All of ``data`` as two in-memory tensors ``(x (N, ...), y (N, ...))``, in the dataset's order.

    A ``DataLoader`` is read through a non-shuffling loader over its dataset (same collate
    function and workers), so the result does not depend on the loader's shuffling.
    """
    pair = _tensor_pair(data)
    if pair is not None:
        return pair
    if isinstance(data, DataLoader):
        count_examples(data)
        data = DataLoader(
            data.dataset,
            batch_size=data.batch_size or batch_size,
            shuffle=False,
            collate_fn=data.collate_fn,
            num_workers=data.num_workers,
        )
    if count_examples(data) == 0:
        raise ConfigError("the data set is empty")
    xs, ys = zip(*labelled_batches(data, batch_size), strict=True)
    return torch.cat(xs), torch.cat(ys)
