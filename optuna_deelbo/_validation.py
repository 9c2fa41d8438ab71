"""The argument checks every public entry point shares; each raises ConfigError naming the value."""

from __future__ import annotations

import math

from optuna_deelbo._errors import ConfigError

__all__ = ["nonnegative_finite", "positive_finite", "positive_int"]


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (bools excluded), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def positive_int(value: object, what: str) -> int:
    """``value`` as an ``int`` if it is a whole number > 0 (not a bool, NaN or inf)."""
    if isinstance(value, int) and not isinstance(value, bool):  # exact: no float round trip (2**53 + 1 stays)
        if value <= 0:
            raise ConfigError(f"{what} must be a positive integer, got {value!r}")
        return value
    number = _finite_number(value)
    if number is None or number != int(number) or number <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(number)


def positive_finite(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a finite number > 0."""
    number = _finite_number(value)
    if number is None or number <= 0:
        raise ConfigError(f"{what} must be a positive finite number, got {value!r}")
    return number


def nonnegative_finite(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a finite number >= 0."""
    number = _finite_number(value)
    if number is None or number < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return number
