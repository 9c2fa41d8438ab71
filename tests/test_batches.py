"""_batches.py: data in any form (tensors, Split, Dataset, DataLoader) counts and reads back the same examples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import optuna_deelbo as od
from optuna_deelbo._batches import count_examples, labelled_batches, to_tensors


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), torch.arange(n) % 4


@given(n=st.integers(1, 40), batch_size=st.integers(1, 50))
def test_every_form_reads_back_the_same_examples_in_order(n: int, batch_size: int) -> None:
    x, y = _data(n)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    for data in ((x, y), od.Split(x, y), TensorDataset(x, y), shuffled):
        assert count_examples(data) == n
        got_x, got_y = to_tensors(data, batch_size)
        assert torch.equal(got_x, x) and torch.equal(got_y, y), type(data).__name__


@given(n=st.integers(1, 40), batch_size=st.integers(1, 50))
def test_batches_cover_the_tensors_once(n: int, batch_size: int) -> None:
    x, y = _data(n)
    batches = list(labelled_batches((x, y), batch_size))
    assert all(len(b) <= batch_size for b, _ in batches)
    assert torch.equal(torch.cat([b for b, _ in batches]), x)


def test_a_loader_counts_its_dataset_not_its_batches() -> None:
    x, y = _data(30)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    assert len(loader) == 4 and count_examples(loader) == 30


def test_dict_batches_with_x_and_y_are_read() -> None:
    x, y = _data(6)
    loader = DataLoader([{"x": x[i], "y": y[i]} for i in range(6)], batch_size=4)
    assert torch.equal(to_tensors(loader)[0], x)


class _Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from zip(*_data(3), strict=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ((torch.zeros(3, 2), torch.zeros(4)), r"share their first dimension"),
        ("x.csv", r"expected \(x, y\) tensors"),
        (DataLoader(_Stream(), batch_size=2), r"IterableDataset"),
        (TensorDataset(torch.zeros(0, 2), torch.zeros(0)), r"empty"),
    ],
)
def test_bad_data_is_refused_with_the_forms_it_takes(data: object, message: str) -> None:
    with pytest.raises(od.ConfigError, match=message):
        to_tensors(data)
