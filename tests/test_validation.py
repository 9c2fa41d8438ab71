"""_validation.py: the shared argument checks accept exactly the numbers they name (fuzzed)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optuna_deelbo import ConfigError
from optuna_deelbo._validation import MAX_COUNT, nonnegative_finite, positive_finite, positive_int

_ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3))


@given(_ANYTHING)
def test_positive_int_takes_only_whole_numbers_above_zero(value: object) -> None:
    """Whole numbers (``3`` or ``3.0``, as a JSON round trip may give) > 0, returned as int."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = real and value == int(value) and 0 < value <= MAX_COUNT  # type: ignore[arg-type]
    if ok:
        result = positive_int(value, "n")
        assert result == value and type(result) is int
    else:
        with pytest.raises(ConfigError, match=r"^n must be"):
            positive_int(value, "n")


@given(_ANYTHING)
def test_finite_checks_refuse_nan_inf_bools_and_text(value: object) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    for check, low_ok in ((positive_finite, lambda v: v > 0), (nonnegative_finite, lambda v: v >= 0)):
        if number and low_ok(value):
            assert check(value, "lr") == float(value)  # type: ignore[arg-type]
        else:
            with pytest.raises(ConfigError, match=r"^lr must be"):
                check(value, "lr")


def test_a_large_integer_is_kept_exactly() -> None:
    """Found by the property test above: 2**53 + 1 went through a float and came back as 2**53."""
    assert positive_int(2**53 + 1, "n", high=2**60) == 2**53 + 1
