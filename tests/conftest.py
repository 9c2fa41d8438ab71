"""Shared test settings: where the real CIFAR-10 JPEG archives are (tests needing them skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

#: The offline CIFAR-10 archives: ``$OPTUNA_DEELBO_DATA_DIR``, else ``shared/data`` next to the repository.
_NEXT_TO_REPO = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_DATA_DIR = Path(os.environ.get("OPTUNA_DEELBO_DATA_DIR") or _NEXT_TO_REPO)
