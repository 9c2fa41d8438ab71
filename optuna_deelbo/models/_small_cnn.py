"""``SmallCNN``: the embedded digits task's network, and head replacement."""

from __future__ import annotations

import copy

import torch
from torch import nn

from optuna_deelbo._errors import ConfigError

__all__ = ["SmallCNN", "with_new_head"]


class SmallCNN(nn.Module):
    """Three 3x3 conv + BatchNorm + ReLU blocks, global average pooling, linear ``head``.

    Input ``(B, in_channels, H, W)``; output logits ``(B, n_classes)``. The head is the
    module ``head`` (parameter prefix ``"head."``).
    """

    def __init__(self, n_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        if n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def with_new_head(model: SmallCNN, n_classes: int, seed: int = 0) -> SmallCNN:
    """A deep copy of ``model`` with a freshly initialised ``head`` for ``n_classes`` (>= 2, seeded)."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        clone.head = nn.Linear(model.head.in_features, n_classes).to(
            device=model.head.weight.device, dtype=model.head.weight.dtype
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return clone
