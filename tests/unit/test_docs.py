"""The README and docs/operations.md name every setting there is, and only those."""

from __future__ import annotations

import re
from pathlib import Path

from payment_worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "operations.md"]
VARIABLES = {f"PAYMENT_{name.upper()}" for name in Settings.model_fields}
# The test suite's variable, and the Stripe gateway's error code for a cancelled PaymentIntent.
NOT_SETTINGS = {"PAYMENT_TEST_CONTAINERS", "PAYMENT_CANCELED"}


def named() -> set[str]:
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCS)
    return set(re.findall(r"PAYMENT_[A-Z0-9_]*[A-Z0-9]", text))


def test_every_setting_is_documented() -> None:
    """Every PAYMENT_* setting appears in the README or docs/operations.md."""
    assert VARIABLES - named() == set()


def test_every_documented_variable_is_a_setting() -> None:
    """Every PAYMENT_* name the docs mention is a real setting (no typos, no leftovers)."""
    assert named() - VARIABLES - NOT_SETTINGS == set()
