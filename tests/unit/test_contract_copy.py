"""docs/CONTRACT.md is the contract, shipped with the project: identical to ../shared/CONTRACT.md
wherever that exists (the workspace the contract is written in)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docs" / "CONTRACT.md"
SHARED = ROOT.parent / "shared" / "CONTRACT.md"


def test_the_contract_ships_with_the_project() -> None:
    assert SHIPPED.is_file()
    assert "docs/CONTRACT.md" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not SHARED.is_file(), reason="no ../shared/CONTRACT.md beside this checkout")
def test_the_shipped_contract_is_the_shared_one() -> None:
    assert SHIPPED.read_bytes() == SHARED.read_bytes(), "copy ../shared/CONTRACT.md to docs/"
