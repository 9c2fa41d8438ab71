"""Optional dependencies in tests: skipped without them on a developer's machine, required under CI."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

__all__ = ["optional_import"]


def optional_import(module: str, extra: str) -> Any:
    """Import ``module``; without it skip the test, unless ``$CI`` is set (.ci/run installs every extra)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"needs the {extra!r} extra: pip install -e '.[{extra}]'")
