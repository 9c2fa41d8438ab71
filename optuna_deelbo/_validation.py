"""The argument checks every public entry point shares; each raises ConfigError naming the value.

Every check refuses bools, NaN and infinities, and numbers past its documented bound (a
10,000-digit integer included) with a one-line message; none lets an ``OverflowError`` or a
torch conversion error through.
"""

from __future__ import annotations

import math
import operator
from typing import SupportsIndex, cast

from optuna_deelbo._errors import ConfigError

__all__ = [
    "FLOAT32_MAX",
    "LEARNING_RATE_RANGE",
    "MAX_COUNT",
    "MAX_LEARNING_RATE",
    "MAX_SEED",
    "MIN_LEARNING_RATE",
    "check_seed",
    "fraction",
    "learning_rate",
    "nonnegative_finite",
    "positive_finite",
    "positive_int",
    "shown",
]

#: The learning rates every entry point accepts: ``MIN_LEARNING_RATE <= lr <= MAX_LEARNING_RATE``.
#: Above the maximum no torch optimizer trains a network (SGD on a normalised net, LARS and the
#: learning-rate-free optimizers' ``lr=1`` stay below 100; above about 3e38 float32 steps overflow
#: before the first update); rates below it that make a run diverge are caught by the divergence
#: rule (the trial is pruned with its reason). Below the minimum a step changes no float32 weight
#: (a step moves a weight w only if it exceeds ~6e-8 |w|): the run would end as it started and
#: look complete.
MIN_LEARNING_RATE = 1e-10
MAX_LEARNING_RATE = 1e6
#: The accepted learning rates as error messages name them.
LEARNING_RATE_RANGE = f"{MIN_LEARNING_RATE:g} to {MAX_LEARNING_RATE:g}"
#: The largest count (steps, batch size, examples, patience, trials...): torch's int32 indexing
#: limit; a larger value is a typo, and would fail deep inside torch or run for years.
MAX_COUNT = 2**31 - 1
#: Seeds are 32-bit (NumPy's generators refuse others).
MAX_SEED = 2**32 - 1
#: The largest finite float32: a setting stored in a float32 tensor (sigma, a scale) must not exceed it.
FLOAT32_MAX = 3.4028234663852886e38


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters.

    A 10,000-digit integer cannot even be printed (Python refuses int -> str past 4,300 digits):
    it is shown by its size instead.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits:,} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (bools excluded), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range (e.g. 10**400)
        return None
    return number if math.isfinite(number) else None


def positive_int(value: object, what: str, high: int = MAX_COUNT) -> int:
    """``value`` as an ``int`` if it is a whole number from 1 to ``high`` (not a bool, NaN or inf)."""
    if isinstance(value, int) and not isinstance(value, bool):  # exact: no float round trip (2**53 + 1 stays)
        whole: int | None = value
    else:
        number = _finite_number(value)
        whole = int(number) if number is not None and number == int(number) else None
    if whole is None or whole <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {shown(value)}")
    if whole > high:
        raise ConfigError(f"{what} must be a positive integer <= {high:,}, got {shown(value)}")
    return whole


def check_seed(value: object, what: str = "seed") -> int:
    """``value`` as an ``int`` if it is a whole number from 0 to :data:`MAX_SEED`."""
    if not isinstance(value, bool):
        try:
            whole = operator.index(cast(SupportsIndex, value))  # int, numpy integers
        except TypeError:
            whole = -1
        if 0 <= whole <= MAX_SEED:
            return whole
    raise ConfigError(f"{what} must be an integer from 0 to {MAX_SEED}, got {shown(value)}")


def positive_finite(value: object, what: str, high: float = math.inf) -> float:
    """``value`` as a ``float`` if it is a finite number > 0 (and <= ``high``)."""
    number = _finite_number(value)
    if number is None or number <= 0 or number > high:
        bound = f" and <= {high:g}" if number is not None and number > high else ""
        raise ConfigError(f"{what} must be a positive finite number{bound}, got {shown(value)}")
    return number


def nonnegative_finite(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a finite number >= 0."""
    number = _finite_number(value)
    if number is None or number < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {shown(value)}")
    return number


def fraction(value: object, what: str) -> float:
    """``value`` as a ``float`` if it is a number strictly between 0 and 1."""
    number = _finite_number(value)
    if number is None or not 0 < number < 1:
        raise ConfigError(f"{what} must be in (0, 1), got {shown(value)}")
    return number


def learning_rate(value: object, what: str = "learning rate") -> float:
    """``value`` as a ``float`` if it is a number from ``MIN_LEARNING_RATE`` to ``MAX_LEARNING_RATE``."""
    number = _finite_number(value)
    if number is None or not MIN_LEARNING_RATE <= number <= MAX_LEARNING_RATE:
        raise ConfigError(f"{what} must be a number from {LEARNING_RATE_RANGE}, got {shown(value)}")
    return number
