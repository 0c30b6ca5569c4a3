"""The reliability suite's report: one row per scenario, printed at the end of the run and
written to .devstack/reliability.json (docs/reliability.md quotes a real run)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from tests.conftest import ARTIFACTS
from tests.scale import FULL, scale

__all__ = ["FULL", "scale"]

ROWS: list[dict[str, Any]] = []


@dataclass
class Row:
    scenario: str
    sent: int = 0
    replies: int = 0
    lost: int = 0
    double_charges: int = 0
    stuck_pending: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Row]:
    row = Row(request.node.name)
    started = time.monotonic()
    yield row
    row.seconds = round(time.monotonic() - started, 1)
    ROWS.append(asdict(row))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    ARTIFACTS.parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS.parent / "reliability.json").write_text(json.dumps(ROWS, indent=2))
    header = ("scenario", "sent", "replies", "lost", "double", "pending", "dead letters", "s")
    widths = (58, 6, 7, 5, 6, 7, 12, 6)
    write = terminalreporter.write_line
    write("")
    write("reliability summary" + (" (full scale)" if FULL else " (quick scale)"))
    write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in ROWS:
        cells = (
            row["scenario"][:58],
            row["sent"],
            row["replies"],
            row["lost"],
            row["double_charges"],
            row["stuck_pending"],
            row["dead_letters"],
            row["seconds"],
        )
        write("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
    for row in ROWS:
        if row["notes"]:
            write("")
            write(f"{row['scenario']}:")
            for name, value in row["notes"].items():
                write(f"  {name}: {value}")
