"""Models: the embedded task's small CNN, CIFAR backbones (ResNet-20 and torchvision's) and head replacement."""

from __future__ import annotations

from optuna_deelbo.models._backbones import (
    BACKBONE_NAMES,
    Backbone,
    CifarBasicBlock,
    CifarResNet,
    build_backbone,
    load_checkpoint,
)
from optuna_deelbo.models._small_cnn import SmallCNN, with_new_head

__all__ = [
    "BACKBONE_NAMES",
    "Backbone",
    "CifarBasicBlock",
    "CifarResNet",
    "SmallCNN",
    "build_backbone",
    "load_checkpoint",
    "with_new_head",
]
