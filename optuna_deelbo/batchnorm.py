"""BatchNorm running statistics for the weights that predict.

During DE-ELBo training every forward pass runs with *sampled* weights, so the BatchNorm
running means and variances describe activations under noise, while predictions use the
*mean* weights. :func:`recalibrate_batchnorm` recomputes them with the mean weights: one
pass over the data in train mode with ``momentum=None`` (PyTorch's cumulative average), so
each layer's ``running_mean`` is exactly the mean of its inputs over the data set (for equal
batch sizes) and ``running_var`` the mean of the per-batch unbiased variances.
"""

from __future__ import annotations

from collections.abc import Callable

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
    x: Tensor,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 256,
    amp: bool = False,
) -> int:
    """Recompute every BatchNorm layer's running statistics of ``model`` (its current weights) on ``x``.

    Args:
        x: inputs ``(N, ...)``, moved to the model's device batch by batch.
        transform: applied to each batch first (the unaugmented evaluation transform).
        batch_size: examples per forward pass (> 0).
        amp: bf16 autocast for the forward passes.

    Returns:
        The number of BatchNorm layers recalibrated (0: the model has none; nothing changes).
    """
    positive_int(batch_size, "batch_size")
    if x.shape[0] == 0:
        raise ConfigError("cannot recalibrate BatchNorm on an empty data set")
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    device = next(model.parameters()).device
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            if transform is not None:
                xb = transform(xb)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                model(xb)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(layers)
