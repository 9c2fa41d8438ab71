"""xdist groups: tests that each start several processes run on one worker, one after another.

The README's test command runs the suite on several pytest-xdist workers (``--dist loadgroup``); a test that
launches 2 ranks or 4 study workers beside another worker's test would put 3-6 processes on 2 cores.
"""

from __future__ import annotations

import pytest

#: Mark of a test (or a module's ``pytestmark``) that starts several processes of its own.
PROCESSES = pytest.mark.xdist_group("processes")
