"""Integrations with other tools, each behind its own optional extra and imported on demand.

* :mod:`optuna_deelbo.integrations.lightning`: ``DEELBoCallback`` for PyTorch Lightning (``[lightning]``);
* :mod:`optuna_deelbo.integrations.transformers`: ``DEELBoTrainer`` for Hugging Face ``transformers.Trainer``
  (``[transformers]``);
* ``hub/samplers/deelbo/``: the optunahub package (a registry folder, installed with this package):
  ``optunahub.load_local_module("samplers/deelbo", registry_root=optunahub_registry_root())``.

Nothing else is imported here, so ``import optuna_deelbo`` never needs the optional packages.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["optunahub_registry_root"]


def optunahub_registry_root() -> str:
    """The folder to pass as optunahub's ``registry_root``: it holds ``samplers/deelbo/`` (installed path, any cwd)."""
    return str(Path(__file__).resolve().parent / "hub")
