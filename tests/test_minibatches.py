"""train/_minibatches.py: each epoch a permutation, seeded, resumable exactly from its state."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from optuna_deelbo.train import Minibatches


@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_an_epoch_never_repeats_an_example(n: int, batch_size: int, seed: int) -> None:
    batches = Minibatches(n, batch_size, seed=seed)
    epoch = torch.cat([batches.next() for _ in range(batches.per_epoch)])
    assert epoch.unique().numel() == epoch.numel() == batches.per_epoch * min(batch_size, n)
    assert int(epoch.min()) >= 0 and int(epoch.max()) < n


@given(n=st.integers(2, 40), batch_size=st.integers(1, 12), cut=st.integers(0, 30), seed=st.integers(0, 99))
def test_a_restored_state_continues_exactly(n: int, batch_size: int, cut: int, seed: int) -> None:
    reference = Minibatches(n, batch_size, seed=seed)
    expected = [reference.next() for _ in range(cut + 10)][cut:]
    first = Minibatches(n, batch_size, seed=seed)
    for _ in range(cut):
        first.next()
    resumed = Minibatches(n, batch_size, seed=seed + 1)  # another seed: the state decides
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(resumed.next(), e) for e in expected)


def test_the_global_rng_is_left_alone() -> None:
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    Minibatches(10, 3, seed=7).next()
    assert torch.equal(torch.rand(1), before)
