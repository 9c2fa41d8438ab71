"""Data: digits and CIFAR-10 transfer splits, CIFAR readers, on-device augmentation and labelled text readers.

Models live in :mod:`optuna_deelbo.models`, tasks (TaskSpec, the built-in tasks) in :mod:`optuna_deelbo.task`.
"""

from __future__ import annotations

from optuna_deelbo.data._cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DeviceAugment,
    default_cache_dir,
    load_cifar10_jpeg,
    load_cifar10_torchvision,
    split_classes,
)
from optuna_deelbo.data._splits import Split, TransferData, digits_transfer, stratified_indices, train_val_split
from optuna_deelbo.data._text import (
    AG_NEWS_CLASSES,
    WORDNET_CLASSES,
    WORDNET_DIR,
    TextExamples,
    load_ag_news,
    read_ag_news_csv,
    read_wordnet_nouns,
)

__all__ = [
    "AG_NEWS_CLASSES",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "WORDNET_CLASSES",
    "WORDNET_DIR",
    "DeviceAugment",
    "Split",
    "TextExamples",
    "TransferData",
    "default_cache_dir",
    "digits_transfer",
    "load_ag_news",
    "load_cifar10_jpeg",
    "load_cifar10_torchvision",
    "read_ag_news_csv",
    "read_wordnet_nouns",
    "split_classes",
    "stratified_indices",
    "train_val_split",
]
