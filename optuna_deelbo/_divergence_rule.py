"""``DivergenceRule``: the limits beyond which a training run counts as diverged.

One rule for every loop: :mod:`optuna_deelbo.train` applies it to its log rows, and
:class:`optuna_deelbo.DEELBo` to a user's own loop (checked when the run is reported or scored).
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna_deelbo._errors import ConfigError
from optuna_deelbo._validation import positive_finite, positive_int

__all__ = ["DivergenceRule"]


@dataclass(frozen=True)
class DivergenceRule:
    """Limits beyond which a training run is ended as diverged (besides any non-finite value).

    Attributes:
        max_sigma: largest allowed posterior std in weight units (DE-ELBo runs), finite,
            > 0; ``None`` = no bound. The default, 100, is orders of magnitude above the
            std of any useful posterior (trained weights are ~1e-3 to 1; the DE-ELBo keeps
            sigma below ~1 on the built-in tasks even at learning rate 1).
        nll_factor: the running training NLL must stay at or below this multiple of the
            reference NLL (> 1); ``None`` = no check.
        patience: consecutive checks (``log_every`` steps apart) above the limit that end
            the run (>= 1).
        min_reference: floor of the reference NLL in nats per example (> 0).
    """

    max_sigma: float | None = 100.0
    nll_factor: float | None = 10.0
    patience: int = 3
    min_reference: float = 0.1

    def __post_init__(self) -> None:
        if self.max_sigma is not None:
            positive_finite(self.max_sigma, "max_sigma")
        if self.nll_factor is not None and positive_finite(self.nll_factor, "nll_factor") <= 1:
            raise ConfigError(f"nll_factor must be > 1 (a multiple of the first NLL), got {self.nll_factor!r}")
        positive_int(self.patience, "divergence patience")
        positive_finite(self.min_reference, "min_reference")
