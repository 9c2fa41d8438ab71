"""Models: the embedded task's small CNN, CIFAR backbones (ResNet-20, torchvision's), head replacement, text models
(LoRA adapters too)."""

from __future__ import annotations

from optuna_deelbo.models._backbones import (
    BACKBONE_NAMES,
    Backbone,
    CifarBasicBlock,
    CifarResNet,
    build_backbone,
    load_checkpoint,
)
from optuna_deelbo.models._lora import LORA_INIT_SIGMA, with_lora
from optuna_deelbo.models._small_cnn import SmallCNN, with_new_head
from optuna_deelbo.models._text import (
    CachedTopClassifier,
    TextClassifier,
    load_sequence_classifier,
    load_tokenizer,
    packaged_encoder_dir,
    reset_head,
)

__all__ = [
    "BACKBONE_NAMES",
    "LORA_INIT_SIGMA",
    "Backbone",
    "CachedTopClassifier",
    "CifarBasicBlock",
    "CifarResNet",
    "SmallCNN",
    "TextClassifier",
    "build_backbone",
    "load_checkpoint",
    "load_sequence_classifier",
    "load_tokenizer",
    "packaged_encoder_dir",
    "reset_head",
    "with_lora",
    "with_new_head",
]
