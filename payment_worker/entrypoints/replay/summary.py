"""What a replay did, counted: records read by kind, outcomes, dead letters, time taken."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from payment_worker.entrypoints.replay.options import ReplayOptions
from payment_worker.service.replay import Kind


@dataclass
class ReplaySummary:
    """Counted up while the replay runs (so not frozen)."""

    read: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    republished_events: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def rows(self) -> list[tuple[str, str]]:
        rows = [("records read", str(self.read))]
        for kind in Kind:
            rows.append((str(kind), str(self.kinds.get(str(kind), 0))))
        for outcome, n in sorted(self.outcomes.items()):
            rows.append((f"  outcome {outcome}", str(n)))
        rows.append(("dead letters written", str(self.dead_letters)))
        rows.append(("events republished", str(self.republished_events)))
        rows.append(("seconds", f"{self.seconds:.2f}"))
        rows.append(("records per second", f"{self.rate:,.0f}"))
        return rows


def merge_summaries(results: list[tuple[ReplaySummary, float]]) -> ReplaySummary:
    """The shards' summaries added up; (summary, wall-clock end) each."""
    merged = ReplaySummary()
    for summary, _ in results:
        merged.read += summary.read
        merged.kinds.update(summary.kinds)
        merged.outcomes.update(summary.outcomes)
        merged.dead_letters += summary.dead_letters
        merged.republished_events += summary.republished_events
    if results:
        first_start = min(end - summary.seconds for summary, end in results)
        merged.seconds = max(end for _, end in results) - first_start
    return merged


def print_summary(summary: ReplaySummary, options: ReplayOptions, processes: int = 1) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"replay of {options.topic}"
        + (f" ({processes} processes)" if processes > 1 else "")
        + (" (dry run: nothing written)" if options.dry_run else "")
    )
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in summary.rows():
        table.add_row(name, value)
    Console().print(table)
