"""optunahub package ``samplers/deelbo``: :class:`optuna_deelbo.DEELBoSampler`, re-exported."""

from __future__ import annotations

from optuna_deelbo import DEELBo, DEELBoSampler, fit
from optuna_deelbo.tuning.trials import without_learned

__all__ = ["DEELBo", "DEELBoSampler", "fit", "without_learned"]
