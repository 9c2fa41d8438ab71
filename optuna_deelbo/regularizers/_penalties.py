"""Weight penalties on a flat parameter vector, added to the per-example training loss.

Every penalty acts on ``d = theta - center`` (``theta`` and ``center`` of shape ``(D,)``,
``center`` defaulting to zeros) and is reported in the same units as weight decay, i.e. it is
added as is to the mean per-example loss (nats per example for cross entropy)::

    "l1"      strength * sum_i |d_i|
    "l2"      strength / 2 * sum_i d_i^2                      (gradient strength * d, as SGD weight decay)
    "l-half"  strength * sum_i [(d_i^2 + eps^2)^(1/4) - sqrt(eps)]

``"l-half"`` is the nonconvex L1/2 quasi-norm ``sum_i |d_i|^(1/2)``, smoothed near zero so that
it is 0 at ``d = 0`` and differentiable everywhere; see :class:`Penalty` for its error bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import nonnegative_finite, positive_finite

__all__ = ["PENALTY_NAMES", "Penalty"]

#: Names accepted wherever a weight penalty is chosen by name.
PENALTY_NAMES: tuple[str, ...] = ("l1", "l2", "l-half")


@dataclass(frozen=True)
class Penalty:
    """``strength * penalty(theta - center)``, a 0-d tensor in the units of the per-example loss.

    The smoothed ``"l-half"`` term ``f(d) = (d^2 + eps^2)^(1/4) - sqrt(eps)`` satisfies, for
    every coordinate, ``|d|^(1/2) - sqrt(eps) <= f(d) <= |d|^(1/2)`` (so the whole penalty is
    within ``strength * D * sqrt(eps)`` below ``strength * sum |d|^(1/2)``, and tends to it as
    ``eps -> 0``), ``f(0) = 0``, and ``f`` is increasing in ``|d|``. Its gradient
    ``f'(d) = d / (2 (d^2 + eps^2)^(3/4))`` is finite everywhere, 0 at ``d = 0``, and bounded by
    ``3^(-3/4) 2^(-1/2) eps^(-1/2) ~= 0.310 eps^(-1/2)`` (attained at ``|d| = sqrt(2) eps``);
    the unsmoothed ``|d|^(1/2)`` has an infinite slope at 0.

    ``"l1"`` uses ``torch.abs``, whose autograd subgradient at ``d = 0`` is 0.

    Attributes:
        kind: one of :data:`PENALTY_NAMES`.
        strength: the coefficient (per-example loss units per unit of penalty), finite, >= 0.
        eps: smoothing scale of ``"l-half"`` in weight units, finite, > 0 (ignored by the others).
    """

    kind: str
    strength: float
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in PENALTY_NAMES:
            raise ConfigError(f"unknown penalty kind {self.kind!r}; choose one of {PENALTY_NAMES}")
        object.__setattr__(self, "strength", nonnegative_finite(self.strength, "penalty strength"))
        object.__setattr__(self, "eps", positive_finite(self.eps, "penalty eps"))

    def __call__(self, theta: Tensor, center: Tensor | None = None) -> Tensor:
        """The penalty at ``theta``.

        Args:
            theta: flat floating-point weights, shape ``(D,)``.
            center: where the penalty is zero, shape ``(D,)``; ``None`` means zeros. It is cast
                to ``theta``'s dtype and device.

        Returns:
            0-d tensor of ``theta``'s dtype, differentiable with respect to ``theta``.
        """
        if not isinstance(theta, Tensor) or not torch.is_floating_point(theta):
            raise ConfigError(f"penalty theta must be a floating-point tensor, got {_describe(theta)}")
        if theta.ndim != 1:
            raise ConfigError(f"penalty theta must be a flat vector of shape (D,), got shape {tuple(theta.shape)}")
        if center is None:
            d = theta
        else:
            if not isinstance(center, Tensor):
                raise ConfigError(f"penalty center must be a tensor, got {_describe(center)}")
            if center.shape != theta.shape:
                raise ConfigError(
                    f"penalty center must have theta's shape {tuple(theta.shape)}, got shape {tuple(center.shape)}"
                )
            d = theta - center.to(dtype=theta.dtype, device=theta.device)
        if self.kind == "l1":
            return self.strength * d.abs().sum()
        if self.kind == "l2":
            return 0.5 * self.strength * (d * d).sum()
        # (d^2 + eps^2)^(1/4) - sqrt(eps) rewritten without cancellation: with r = sqrt(d^2 + eps^2),
        # (sqrt(r) - sqrt(eps)) (sqrt(r) + sqrt(eps)) (r + eps) = r^2 - eps^2 = d^2; exactly 0 at d = 0.
        squared = d * d
        r = torch.sqrt(squared + self.eps**2)
        smoothed = squared / ((torch.sqrt(r) + math.sqrt(self.eps)) * (r + self.eps))
        return self.strength * smoothed.sum()


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__
