"""How big a scenario or a property test runs: small in `make test`, full in `make reliability`
(RELIABILITY_FULL=1)."""

from __future__ import annotations

import os

FULL = os.environ.get("RELIABILITY_FULL") == "1"


def scale(quick: int, full: int) -> int:
    """`full` under RELIABILITY_FULL=1 (`make reliability`), else `quick` (`make test`)."""
    return full if FULL else quick
