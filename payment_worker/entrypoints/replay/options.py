"""What a replay is asked to do: the topic, the time window and the switches of the command
line."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from payment_worker.entrypoints.replay.exceptions import ReplayError


@dataclass(frozen=True)
class ReplayOptions:
    topic: str
    from_timestamp_ms: int | None = None
    to_timestamp_ms: int | None = None
    republish_events: bool = False
    dry_run: bool = False
    batch_size: int = 2000
    max_in_flight: int = 500
    # This process's share of the partitions when the replay is split across processes:
    # (index, count) takes every count-th partition, starting at the index-th.
    shard: tuple[int, int] = (0, 1)


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch from ISO 8601 (naive is UTC) or a number of milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"not a timestamp: {text!r} (ISO 8601 or epoch milliseconds)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)
