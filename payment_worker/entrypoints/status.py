"""`payment-worker status`: what is stuck and what is flowing, for an operator or a script.

Exit codes: 0 nothing is past a threshold; 1 something is (each named on its own line);
2 PostgreSQL or Kafka could not be reached or read (a schema not migrated, a topic missing);
what could be read is printed all the same.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from payment_worker.config import Settings
from payment_worker.domain.health import PartitionLag, StoreState, Thresholds, problems
from payment_worker.exceptions import PaymentWorkerError
from payment_worker.service.ports import GroupLagPort, HealthStorePort

HEALTHY, PAST_THRESHOLD, UNREACHABLE = 0, 1, 2


@dataclass
class Report:
    group: str
    topic: str
    lags: list[PartitionLag] = field(default_factory=list)
    state: StoreState | None = None
    problems: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return UNREACHABLE
        return PAST_THRESHOLD if self.problems else HEALTHY

    def as_json(self) -> dict[str, Any]:
        return {
            "status": ("healthy", "past_threshold", "unreachable")[self.exit_code],
            "group": self.group,
            "topic": self.topic,
            "partitions": [{**asdict(p), "lag": p.lag} for p in self.lags],
            "total_lag": sum(p.lag for p in self.lags),
            "store": asdict(self.state) if self.state else None,
            "problems": self.problems,
            "unreachable": self.unreachable,
        }


async def gather(
    store: HealthStorePort, lag: GroupLagPort, limits: Thresholds, settings: Settings
) -> Report:
    """Both sources read at once, each within its own timeout; one that fails is reported."""
    report = Report(settings.consumer_group, settings.topic_commands)
    lags, state = await asyncio.gather(
        asyncio.wait_for(lag.lags(), 15),
        asyncio.wait_for(store.stuck_state(), 15),
        return_exceptions=True,
    )
    for source, value in (("kafka", lags), ("postgresql", state)):
        # Down, or up but not readable (a schema never migrated, a topic missing): either way
        # there is nothing to judge, so it is exit 2, with the reason.
        if isinstance(value, (PaymentWorkerError, TimeoutError, OSError)):
            report.unreachable.append(f"{source}: {value or type(value).__name__}")
        elif isinstance(value, BaseException):
            raise value
    if isinstance(lags, list):
        report.lags = lags
    if isinstance(state, StoreState):
        report.state = state
        report.problems = problems(report.lags, state, limits)
    return report


def print_report(report: Report, *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report.as_json(), indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"consumer group {report.group} on {report.topic}", soft_wrap=True)
    lag = Table()
    for column in ("partition", "committed", "end", "lag"):
        lag.add_column(column, justify="right")
    for p in report.lags:
        committed = "-" if p.committed is None else str(p.committed)
        lag.add_row(str(p.partition), committed, str(p.end), f"{p.lag:,}")
    console.print(lag)
    state = report.state
    if state is not None:
        table = Table(show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        run = state.last_reconciler_run
        rows = [
            ("outbox rows waiting", f"{state.outbox_backlog:,}"),
            ("oldest unsent row", f"{state.oldest_unsent_s:.1f} s"),
            ("outbox rows parked", f"{state.parked:,}"),
            *(
                (f"  parked {kind}: {error[:60]}", f"{n:,}")
                for kind, error, n in state.parked_by_reason
            ),
            ("pending payments", f"{state.pending:,}"),
            ("oldest pending payment", f"{state.oldest_pending_s:.1f} s"),
            ("dead letters, last hour", f"{sum(n for _, n in state.dead_letters_last_hour):,}"),
            *((f"  reason {reason}", f"{n:,}") for reason, n in state.dead_letters_last_hour),
            (
                "last reconciler run",
                "never" if run is None else f"{run.age_s:.0f} s ago ({run.last_finished} finished)",
            ),
        ]
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in report.unreachable:
        print(f"UNREACHABLE {line}", file=sys.stderr)
    for line in report.problems:
        print(f"PROBLEM {line}")
    if report.exit_code == HEALTHY:
        print("healthy: nothing past a threshold")
