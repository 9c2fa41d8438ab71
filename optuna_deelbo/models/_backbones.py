"""Image backbones with their head split off: torchvision ResNet-18/50, ConvNeXt-Tiny, CIFAR ResNet.

Each backbone is returned together with its head prefix, so that the body gets the transfer
prior (mean = pretrained weights) and the head its own zero-mean prior. Pretrained weights
come from torchvision (``weights="DEFAULT"``: downloaded by torchvision into its cache, for
users with internet) or from a checkpoint file (a ``state_dict`` saved with ``torch.save``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from optuna_deelbo._errors import ConfigError

__all__ = ["BACKBONE_NAMES", "Backbone", "CifarBasicBlock", "CifarResNet", "build_backbone", "load_checkpoint"]


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers (the residual branch, ending in ``bn2``) plus a shortcut."""

    #: The module whose output ends the residual branch (stochastic depth drops it there).
    residual_branch_end = "bn2"

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016): 3 stages of ``n`` basic blocks.

    Input ``(B, 3, 32, 32)``; output ``(B, n_classes)``; head = ``head`` (prefix ``"head."``).
    ``depth=20`` has 0.27 M weights.
    """

    def __init__(self, n_classes: int, depth: int = 20, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"CifarResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(CifarBasicBlock(cin, cout, stride=2 if stage > 0 and b == 0 else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Backbone:
    """A model and how to treat it.

    Attributes:
        model: the network, head sized for the requested classes.
        head_prefixes: parameter-name prefixes of the head (e.g. ``("fc.",)``).
        replace_head: ``replace_head(model, n_classes, seed)`` swaps in a fresh head, in place.
    """

    model: nn.Module
    head_prefixes: tuple[str, ...]
    replace_head: Callable[[nn.Module, int, int], None]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global CPU generator seeded with ``seed``; its state outside is left as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _fresh_linear(old: nn.Linear, n_classes: int, seed: int) -> nn.Linear:
    with _seeded(seed):
        return nn.Linear(old.in_features, n_classes).to(device=old.weight.device, dtype=old.weight.dtype)


def _replace_attr_head(attr: str) -> Callable[[nn.Module, int, int], None]:
    def replace(model: nn.Module, n_classes: int, seed: int) -> None:
        setattr(model, attr, _fresh_linear(getattr(model, attr), n_classes, seed))

    return replace


def _replace_convnext_head(model: nn.Module, n_classes: int, seed: int) -> None:
    try:
        classifier = model.get_submodule("classifier")
        old = classifier.get_submodule("2")
    except AttributeError:
        raise ConfigError("expected a ConvNeXt model with a classifier[2] head; this model has none") from None
    if not isinstance(classifier, nn.Sequential) or not isinstance(old, nn.Linear):
        raise ConfigError("expected a ConvNeXt classifier ending in nn.Linear at classifier[2]")
    classifier[2] = _fresh_linear(old, n_classes, seed)


def load_checkpoint(model: nn.Module, path: str | Path, *, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a ``state_dict`` file into ``model`` (entries under ``skip_prefixes``, e.g. an old head, are ignored).

    Raises:
        ConfigError: missing or unreadable file, not a state dict, or keys/shapes that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "unreadable"
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {str(path)!r} is not a state_dict of tensors")
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in skip_prefixes)}
    own = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in skip_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {str(path)!r} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ConfigError(f"checkpoint {str(path)!r} has wrong shapes for {bad[:5]}")
    model.load_state_dict(state, strict=False)


#: Names accepted by :func:`build_backbone`.
BACKBONE_NAMES: tuple[str, ...] = ("cifar-resnet20", "resnet18", "resnet50", "convnext_tiny")


def build_backbone(name: str, n_classes: int, weights: str | Path | None = None, seed: int = 0) -> Backbone:
    """A backbone with a fresh head for ``n_classes``.

    Args:
        name: one of :data:`BACKBONE_NAMES`.
        n_classes: size of the new head (>= 2).
        weights: ``None`` (random init), ``"DEFAULT"`` (torchvision's pretrained weights,
            downloaded by torchvision; not for ``cifar-resnet20``), or a checkpoint path whose
            body is loaded (its head, if any, is ignored).
        seed: seeds the random initialisation: the whole model's (every weight a checkpoint does not
            replace) and the new head's. The global generator is left as it was. (The body's init
            once drew from the global generator, which torch seeds afresh in every process: each
            Split-CIFAR pretraining then gave another body, 50.1 % against 55.7 % and 55.9 % for one
            and the same DE-ELBo run downstream.)
    """
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {BACKBONE_NAMES}")
    if n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    model: nn.Module
    if name == "cifar-resnet20":
        if weights == "DEFAULT":
            raise ConfigError(
                "cifar-resnet20 has no torchvision weights; pretrain it (Split-CIFAR) or pass a checkpoint"
            )
        with _seeded(seed):
            model = CifarResNet(n_classes)
        prefixes, replace = ("head.",), _replace_attr_head("head")
    else:
        import torchvision

        builder = getattr(torchvision.models, name)
        tv_weights = "DEFAULT" if weights == "DEFAULT" else None
        with _seeded(seed):
            model = builder(weights=tv_weights)
        if name.startswith("resnet"):
            prefixes, replace = ("fc.",), _replace_attr_head("fc")
        else:
            prefixes, replace = ("classifier.2.",), _replace_convnext_head
    if weights is not None and weights != "DEFAULT":
        load_checkpoint(model, weights, skip_prefixes=prefixes)
    replace(model, n_classes, seed)
    return Backbone(model=model, head_prefixes=prefixes, replace_head=replace)
