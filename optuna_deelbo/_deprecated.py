"""Names that moved: a package's ``__getattr__`` serves each old name from its new home with a DeprecationWarning.

The old names keep working for one release (until 0.4); every entry names its public new home as
``"package:attr"`` (tests/test_public_api.py checks that each resolves).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REMOVED_IN", "call_moved", "moved_names"]

#: The release that drops the old names.
REMOVED_IN = "0.4"


def moved_names(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps an old attribute to ``"new.module:attr"``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        warnings.warn(
            f"{package}.{name} has moved: use {module}.{attr} ({package}.{name} is removed in {REMOVED_IN})",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), attr)

    __getattr__.moved = dict(names)  # type: ignore[attr-defined]
    return __getattr__


def call_moved(old: str, target: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``target`` (``"new.module:function"``) for the deprecated ``old`` (e.g. a method that moved up a layer)."""
    module, _, attr = target.partition(":")
    warnings.warn(
        f"{old} has moved: use {module}.{attr} ({old} is removed in {REMOVED_IN})", DeprecationWarning, stacklevel=3
    )
    return getattr(importlib.import_module(module), attr)(*args, **kwargs)
