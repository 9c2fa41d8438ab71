"""The hypothesis profiles of the test suite (loaded by conftest.py) and :func:`examples`.

* ``derandomized`` (the default, for everyone, CI or not): every run draws the same examples and
  keeps no example database, so a fresh clone never passes or fails by chance;
* ``explore`` (``HYPOTHESIS_PROFILE=explore``, on request, before every stop): random examples,
  :data:`EXPLORE_FACTOR` times as many, failures saved to ``.hypothesis/`` and replayed. Each case
  it finds becomes an explicit test.
"""

from __future__ import annotations

import os

from hypothesis import settings

__all__ = ["EXPLORE_FACTOR", "PROFILE", "PROFILES", "examples", "load"]

PROFILES = ("derandomized", "explore")
#: How many times more examples each property test draws under ``explore``.
EXPLORE_FACTOR = 10
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or "derandomized"


def examples(n: int) -> int:
    """A property test's ``max_examples``: ``n``, or ``EXPLORE_FACTOR * n`` under ``explore``."""
    return n * EXPLORE_FACTOR if PROFILE == "explore" else n


def load() -> None:
    """Register both profiles and load :data:`PROFILE` (an unknown name is refused, not ignored)."""
    if PROFILE not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: use 'explore' (random examples) or leave it unset")
    settings.register_profile("derandomized", derandomize=True, database=None, print_blob=True)
    settings.register_profile("explore", max_examples=examples(100), print_blob=True)
    settings.load_profile(PROFILE)
