"""BatchNorm running statistics for the weights that predict.

During DE-ELBo training every forward pass runs with *sampled* weights, so the BatchNorm
running means and variances describe activations under noise, while predictions use the
*mean* weights. :func:`recalibrate_batchnorm` recomputes them with the mean weights: one
pass over the data in train mode with ``momentum=None`` (PyTorch's cumulative average), so
each layer's ``running_mean`` is exactly the mean of its inputs over the data set (for equal
batch sizes) and ``running_var`` the mean of the per-batch unbiased variances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_int

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    x: Tensor | Iterable[Any],
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 256,
    amp: bool = False,
    call: Callable[[Any], object] | None = None,
) -> int:
    """Recompute every BatchNorm layer's running statistics of ``model`` (its current weights) on ``x``.

    Args:
        x: inputs ``(N, ...)``, moved to the model's device batch by batch; or an iterable of
            batches (a ``DataLoader``: each batch is an input tensor or a ``(x, y, ...)`` tuple
            whose first element is the input), used as they come (``batch_size`` is then unused).
        transform: applied to each batch first (the unaugmented evaluation transform).
        batch_size: examples per forward pass (> 0).
        amp: bf16 autocast for the forward passes.
        call: runs one batch of an iterable ``x`` as it comes (e.g. a LightningModule's
            ``training_step`` for a module without ``forward``) instead of ``model(input)``;
            ``transform`` is then unused.

    Returns:
        The number of BatchNorm layers recalibrated (0: the model has none; nothing changes).

    The pass draws no random numbers of the caller's (dropout masks, a shuffling loader): the global
    generators are restored afterwards, so a recalibration for a checkpoint mid-run changes nothing
    of the run that goes on.
    """
    positive_int(batch_size, "batch_size")
    if call is not None and isinstance(x, Tensor):
        raise ConfigError("call= runs the batches of an iterable (a DataLoader), not a tensor")
    if isinstance(x, Tensor) and x.shape[0] == 0:
        raise ConfigError("cannot recalibrate BatchNorm on an empty data set")
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _recalibrate(model, layers, x, device, transform=transform, batch_size=batch_size, amp=amp, call=call)


def _recalibrate(
    model: nn.Module,
    layers: list[nn.modules.batchnorm._BatchNorm],
    x: Tensor | Iterable[Any],
    device: torch.device,
    *,
    transform: Callable[[Tensor], Tensor] | None,
    batch_size: int,
    amp: bool,
    call: Callable[[Any], object] | None,
) -> int:
    """:func:`recalibrate_batchnorm`'s pass, its arguments checked."""
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        if call is not None:
            for batch in x:
                seen += 1
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    call(batch)
            return len(layers) if seen else _empty()
        for xb in _input_batches(x, batch_size):
            xb = xb.to(device)
            seen += int(xb.shape[0])
            if transform is not None:
                xb = transform(xb)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                model(xb)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(layers) if seen else _empty()


def _empty() -> int:
    raise ConfigError("cannot recalibrate BatchNorm on an empty data set (the iterable gave no batches)")


def _input_batches(x: Tensor | Iterable[Any], batch_size: int) -> Iterator[Tensor]:
    """Input batches of a tensor (slices of ``batch_size``) or of an iterable of batches."""
    if isinstance(x, Tensor):
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size]
        return
    for batch in x:
        xb = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(xb, Tensor):
            raise ConfigError(f"a batch must be a tensor or a (x, y, ...) tuple of tensors, got {type(xb).__name__}")
        yield xb
