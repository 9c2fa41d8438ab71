"""Structural regularizers switched on in an existing model: dropout before the head, stochastic depth.

Both work through forward hooks and parameter-free submodules, so parameter names, state dicts,
checkpoints, the body/head split and the priors are unchanged, and both act only in training
mode (``model.eval()`` turns them off).

- Head dropout (Srivastava et al. 2014): ``nn.Dropout(p)`` on the head's input features.
- Stochastic depth (Huang et al. 2016): each residual branch is dropped for a whole example
  with probability ``p_l = p * l / L`` for block ``l = 1..L`` (the linear decay rule) and scaled
  by ``1 / (1 - p_l)`` when kept (``torchvision.ops.StochasticDepth(mode="row")``). Residual
  blocks are :class:`~optuna_deelbo.data.CifarResNet` blocks, torchvision ResNet
  ``BasicBlock``/``Bottleneck`` (hook on the branch's last BatchNorm) and ConvNeXt ``CNBlock``
  (its own ``stochastic_depth`` module).
"""

from __future__ import annotations

from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError

__all__ = ["check_probability", "residual_blocks", "set_head_dropout", "set_stochastic_depth"]

_DROPOUT_ATTR = "head_dropout"
_DROP_ATTR = "residual_drop"


def check_probability(p: float, what: str) -> float:
    """``p`` as a float if it is a probability in ``[0, 1)`` (a drop rate), else ConfigError naming ``what``."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"{what} must be a probability in [0, 1), got {p!r}")
    return float(p)


def _head_module(model: nn.Module, head_prefixes: tuple[str, ...]) -> nn.Module:
    if not head_prefixes:
        raise ConfigError("head dropout needs the head's parameter prefix (e.g. ('head.',)); got none")
    name = head_prefixes[0].rstrip(".")
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"the model has no head module {name!r} (from head prefix {head_prefixes[0]!r})") from None


def set_head_dropout(model: nn.Module, head_prefixes: tuple[str, ...], p: float) -> None:
    """Apply ``Dropout(p)`` to the input of the head module (in place; calling again changes ``p``)."""
    p = check_probability(p, "dropout")
    head = _head_module(model, head_prefixes)
    existing = getattr(head, _DROPOUT_ATTR, None)
    if isinstance(existing, nn.Dropout):
        existing.p = p
        return
    head.add_module(_DROPOUT_ATTR, nn.Dropout(p))

    def pre_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        dropout = getattr(module, _DROPOUT_ATTR)
        return (dropout(args[0]), *args[1:])

    head.register_forward_pre_hook(pre_hook)


def _branch_end(block: nn.Module) -> nn.Module | None:
    """The last module of a residual branch (its output is added to the shortcut), if known.

    A block class names it in a ``residual_branch_end`` class attribute (this package's
    ``CifarBasicBlock`` does), or is one of torchvision's ResNet blocks.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    end = getattr(type(block), "residual_branch_end", None)
    if isinstance(end, str):
        return getattr(block, end)
    if isinstance(block, BasicBlock):
        return block.bn2
    if isinstance(block, Bottleneck):
        return block.bn3
    return None


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's residual blocks in forward order (CIFAR ResNet, torchvision ResNet, ConvNeXt)."""
    from torchvision.models.convnext import CNBlock

    return [m for m in model.modules() if isinstance(m, CNBlock) or _branch_end(m) is not None]


def set_stochastic_depth(model: nn.Module, p: float) -> int:
    """Drop residual branches with probability ``p * l / L`` (in place; calling again changes ``p``).

    Returns:
        ``L``, the number of residual blocks affected.

    Raises:
        ConfigError: ``p`` outside [0, 1), or a model without residual blocks.
    """
    from torchvision.ops import StochasticDepth

    p = check_probability(p, "stochastic depth")
    blocks = residual_blocks(model)
    if not blocks:
        raise ConfigError(f"stochastic depth needs residual blocks; {type(model).__name__} has none")
    for index, block in enumerate(blocks, start=1):
        p_l = p * index / len(blocks)
        own = getattr(block, "stochastic_depth", None)
        if isinstance(own, StochasticDepth):  # ConvNeXt's CNBlock
            own.p = p_l
            continue
        existing = getattr(block, _DROP_ATTR, None)
        if isinstance(existing, StochasticDepth):
            existing.p = p_l
            continue
        block.add_module(_DROP_ATTR, StochasticDepth(p_l, "row"))
        end = _branch_end(block)
        assert end is not None

        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor, owner: nn.Module = block) -> Tensor:
            drop = getattr(owner, _DROP_ATTR)
            return drop(output) if owner.training else output

        end.register_forward_hook(hook)
    return len(blocks)
