"""Integrations with other tools, each behind its own optional extra and imported on demand.

* :mod:`optuna_deelbo.integrations.lightning`: ``DEELBoCallback`` for PyTorch Lightning (``[lightning]``);
* ``hub/samplers/deelbo/``: the optunahub package (a registry folder, not a Python module of this package).

Nothing is imported here, so ``import optuna_deelbo`` never needs the optional packages.
"""

from __future__ import annotations

__all__: list[str] = []
