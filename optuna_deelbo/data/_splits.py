"""Data sets as in-memory tensors (read from a ``Dataset`` or ``DataLoader`` if need be), the embedded digits
transfer task and stratified splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from optuna_deelbo._batches import to_tensors
from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import fraction, positive_int

__all__ = ["Split", "TransferData", "digits_transfer", "stratified_indices", "train_val_split"]


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (``(N, C, H, W)`` float32) and integer labels ``y`` (``(N,)`` int64)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        for name, value in (("x", self.x), ("y", self.y)):
            if not isinstance(value, Tensor):
                raise ConfigError(
                    f"Split {name} must be a torch.Tensor, got {type(value).__name__} (use torch.as_tensor)"
                )
        if self.x.ndim == 0:
            raise ConfigError("inputs x must have a leading example dimension (N, ...), got a 0-d tensor")
        if self.y.ndim != 1:
            raise ConfigError(f"labels y must have shape (N,), got shape {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        if self.y.dtype != torch.int64:
            raise ConfigError(f"labels must be int64 class indices, got {self.y.dtype}")
        if self.y.numel() and int(self.y.min()) < 0:
            raise ConfigError(f"labels must be class indices >= 0, got {int(self.y.min())}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @classmethod
    def from_data(cls, data: object, *, what: str = "data") -> Split:
        """Read ``(x, y)`` tensors, a ``Dataset`` of ``(input, label)`` items or a ``DataLoader`` into memory.

        A loader is read through its dataset in order (its shuffling does not matter); labels
        become int64. The data of a fine-tuning run with scarce labels fit in memory; for a large
        test set, ``od.evaluate`` reads a ``DataLoader`` batch by batch instead.
        """
        if isinstance(data, Split):
            return data
        try:
            x, y = to_tensors(data)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        if not y.is_floating_point():
            y = y.long()
        return cls(x, y)

    def subset(self, index: Tensor) -> Split:
        """The rows ``index`` of this split."""
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class TransferData:
    """A source task to pretrain on and a disjoint target task to fine-tune on.

    Attributes:
        source: all source-task examples (labels ``0..n_source_classes-1``).
        train: the target training set of size ``N`` (labels ``0..n_classes-1``).
        test: the remaining target examples, never used for training or selection.
    """

    name: str
    source: Split
    train: Split
    test: Split
    n_source_classes: int
    n_classes: int


def stratified_indices(y: Tensor, n: int, seed: int) -> Tensor:
    """``n`` indices of ``y`` with classes as balanced as possible (a seeded, sorted draw)."""
    classes = torch.unique(y)
    if n <= 0:
        raise ConfigError(f"subset size must be positive, got {n}")
    if n > y.shape[0]:
        raise ConfigError(f"asked for {n} examples but only {y.shape[0]} are available")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y.numpy() == c)) for c in classes.tolist()]
    base, extra = divmod(n, len(classes))
    extra_classes = set(rng.permutation(len(classes))[:extra].tolist())
    picked: list[np.ndarray] = []
    for k, idx in enumerate(per_class):
        want = base + (1 if k in extra_classes else 0)
        if want > idx.shape[0]:
            raise ConfigError(f"class {classes[k].item()} has only {idx.shape[0]} examples, {want} needed")
        picked.append(idx[:want])
    return torch.from_numpy(np.sort(np.concatenate(picked))).long()


def train_val_split(split: Split, val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """Stratified train/validation split (the paper's 80/20 protocol for MAP baselines)."""
    fraction(val_fraction, "val_fraction")
    n_val = max(1, round(len(split) * val_fraction))
    if n_val >= len(split):
        raise ConfigError(f"N = {len(split)} is too small to hold out a validation split")
    val_idx = stratified_indices(split.y, n_val, seed)
    mask = torch.ones(len(split), dtype=torch.bool)
    mask[val_idx] = False
    return split.subset(torch.nonzero(mask).squeeze(1)), split.subset(val_idx)


def digits_transfer(
    n_train: int = 100,
    seed: int = 0,
    source_classes: Sequence[int] = (0, 1, 2, 3, 4),
) -> TransferData:
    """The embedded default task, from scikit-learn's bundled 8x8 digits (1,797 images).

    Pretrain on ``source_classes`` (all their images); fine-tune on the other digits with a
    stratified training set of ``n_train`` images; test on every remaining target image.
    Pixels are scaled to [0, 1] and standardised with the source set's mean and std.
    """
    from sklearn.datasets import load_digits

    n_train = positive_int(n_train, "n_train")
    source_set = sorted(set(int(c) for c in source_classes))
    if not source_set or not set(source_set) <= set(range(10)) or len(source_set) >= 10:
        raise ConfigError(f"source_classes must be a non-empty proper subset of 0..9, got {tuple(source_classes)}")
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    target_set = [c for c in range(10) if c not in source_set]
    is_source = torch.isin(labels, torch.tensor(source_set))
    mean, std = images[is_source].mean(), images[is_source].std()
    images = (images - mean) / std

    def relabel(mask: Tensor, classes: list[int]) -> Split:
        lookup = torch.full((10,), -1, dtype=torch.int64)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))
        return Split(images[mask], lookup[labels[mask]])

    source = relabel(is_source, source_set)
    target = relabel(~is_source, target_set)
    min_n, max_n = 5 * len(target_set), len(target) - 100
    if not min_n <= n_train <= max_n:
        raise ConfigError(
            f"n_train must be between {min_n} (5 per class, so the 80/20 split keeps every class) "
            f"and {max_n} (at least 100 test images), got {n_train}"
        )
    train_idx = stratified_indices(target.y, int(n_train), seed)
    test_mask = torch.ones(len(target), dtype=torch.bool)
    test_mask[train_idx] = False
    return TransferData(
        name=f"digits-N{int(n_train)}-seed{seed}",
        source=source,
        train=target.subset(train_idx),
        test=target.subset(torch.nonzero(test_mask).squeeze(1)),
        n_source_classes=len(source_set),
        n_classes=len(target_set),
    )
