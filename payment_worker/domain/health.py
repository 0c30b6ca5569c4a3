"""What is stuck and what is flowing: the state an operator reads, and when it is a problem."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of the commands topic as the worker's group stands on it."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    end: int  # the high watermark
    start: int  # the low watermark

    @property
    def lag(self) -> int:
        """Records the group has not committed yet (from the start when it never committed)."""
        position = self.committed if self.committed is not None else self.start
        return max(0, self.end - max(position, self.start))


@dataclass(frozen=True, slots=True)
class ReconcilerRun:
    reconciler_id: str
    age_s: float
    last_finished: int
    total_finished: int


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the database holds that is backing up (ages in seconds; 0 when there is none)."""

    outbox_backlog: int
    oldest_unsent_s: float
    parked: int
    pending: int
    oldest_pending_s: float
    parked_by_reason: list[tuple[str, str, int]] = field(default_factory=list)
    dead_letters_last_hour: list[tuple[str, int]] = field(default_factory=list)
    last_reconciler_run: ReconcilerRun | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Past any of these, `payment-worker status` exits 1 (the alert rules use the same)."""

    max_lag: int = 1000
    max_outbox_age_s: float = 60.0
    max_parked: int = 0
    max_pending_age_s: float = 300.0
    max_dead_letters: int = 100  # in the last hour
    max_reconciler_silence_s: float = 300.0


def problems(lags: list[PartitionLag], state: StoreState, limits: Thresholds) -> list[str]:
    """Each threshold passed, as a line an operator can act on (empty: healthy)."""
    found = [
        f"{p.topic}[{p.partition}]: {p.lag} records behind (over {limits.max_lag})"
        for p in lags
        if p.lag > limits.max_lag
    ]
    if state.oldest_unsent_s > limits.max_outbox_age_s:
        found.append(
            f"outbox: oldest unsent row is {state.oldest_unsent_s:.0f} s old"
            f" (over {limits.max_outbox_age_s:g} s; {state.outbox_backlog} waiting)"
        )
    if state.parked > limits.max_parked:
        found.append(f"outbox: {state.parked} parked rows (over {limits.max_parked})")
    if state.oldest_pending_s > limits.max_pending_age_s:
        found.append(
            f"payments: oldest pending is {state.oldest_pending_s:.0f} s old"
            f" (over {limits.max_pending_age_s:g} s; {state.pending} pending)"
        )
    dead = sum(n for _, n in state.dead_letters_last_hour)
    if dead > limits.max_dead_letters:
        found.append(f"dead letters: {dead} in the last hour (over {limits.max_dead_letters})")
    run = state.last_reconciler_run
    if state.pending and (run is None or run.age_s > limits.max_reconciler_silence_s):
        silence = "never ran" if run is None else f"last ran {run.age_s:.0f} s ago"
        found.append(
            f"reconciler: {silence} while {state.pending} payments are pending"
            f" (over {limits.max_reconciler_silence_s:g} s)"
        )
    return found
