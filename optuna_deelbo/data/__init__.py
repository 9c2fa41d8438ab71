"""Data and models: digits and CIFAR-10 transfer splits, backbones, the task specification and built-in tasks."""

from __future__ import annotations

from optuna_deelbo.data._backbones import (
    BACKBONE_NAMES,
    Backbone,
    CifarBasicBlock,
    CifarResNet,
    build_backbone,
    load_checkpoint,
)
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
from optuna_deelbo.data._models import SmallCNN, pretrain, with_new_head
from optuna_deelbo.data._splits import Split, TransferData, digits_transfer, stratified_indices, train_val_split
from optuna_deelbo.data._task import TaskSpec
from optuna_deelbo.data._tasks import DATASET_NAMES, digits_task, split_cifar_task

__all__ = [
    "BACKBONE_NAMES",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASET_NAMES",
    "Backbone",
    "CifarBasicBlock",
    "CifarResNet",
    "DeviceAugment",
    "SmallCNN",
    "Split",
    "TaskSpec",
    "TransferData",
    "build_backbone",
    "default_cache_dir",
    "digits_task",
    "digits_transfer",
    "load_checkpoint",
    "load_cifar10_jpeg",
    "load_cifar10_torchvision",
    "pretrain",
    "split_cifar_task",
    "split_classes",
    "stratified_indices",
    "train_val_split",
    "with_new_head",
]
