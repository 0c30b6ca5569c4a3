"""The worker's Prometheus metrics, and the counter of the shim's reply listener (an adapter),
registered once per process."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from payment_worker import tracing

COMMANDS = Counter(
    "payment_worker_commands_total", "Commands processed, by outcome.", ["outcome", "duplicate"]
)
LATENCY = Histogram(
    "payment_worker_processing_seconds",
    "Time from consuming a command to its database commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("payment_worker_dead_letters_total", "Records dead-lettered.", ["reason"])
OUTBOX_BACKLOG = Gauge("payment_worker_outbox_backlog", "Outbox rows not yet published.")
OUTBOX_PUBLISHED = Counter("payment_worker_outbox_published_total", "Outbox rows published.")
OUTBOX_FAILED = Counter(
    "payment_worker_outbox_delivery_failures_total", "Outbox deliveries that failed (retried)."
)
OUTBOX_PARKED = Counter(
    "payment_worker_outbox_parked_total",
    "Outbox rows parked after too many refused deliveries, by kind.",
    ["kind"],
)
OUTBOX_PARKED_ROWS = Gauge(
    "payment_worker_outbox_parked_records", "Outbox rows parked (kept, never published)."
)
REDIS_DEGRADED = Counter(
    "payment_worker_redis_degraded_total",
    "Times the order lock could not use Redis (the database guarantees still hold).",
)
IN_FLIGHT = Gauge("payment_worker_in_flight", "Commands being processed.")
RETRIES = Counter("payment_worker_retries_total", "Retryable failures of whole commands.", ["kind"])
RECONCILED = Counter("payment_worker_reconciled_total", "Stale pending payments finished.")
RECONCILE_SKIPPED = Counter(
    "payment_worker_reconcile_skipped_total",
    "Stale pending payments the reconciler could not finish on a pass (tried again later).",
)
SKIPPED_RECORDS = Counter(
    "payment_worker_records_skipped_total",
    "Records given up on after every way of answering them failed (offset moved on).",
)

# -- what pages: replies, dependencies, and the state sampled from the broker and the database

CONSUMED = Counter("payment_worker_records_consumed_total", "Command records consumed.")
DEPENDENCY_SECONDS = Histogram(
    "payment_worker_dependency_request_duration_seconds",
    "Calls to a dependency (ordering, inventory, gateway, redis), by outcome"
    " (ok, not_found, declined, error, timeout, degraded).",
    ["dependency", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONSUMER_LAG = Gauge(
    "payment_worker_consumer_lag_records",
    "Records on the commands topic not yet committed by the worker's group, per partition.",
    ["topic", "partition"],
)
OUTBOX_OLDEST_AGE = Gauge(
    "payment_worker_outbox_oldest_unsent_age_seconds",
    "Age of the oldest outbox row not yet published (0 when none is waiting).",
)
PENDING_PAYMENTS = Gauge("payment_worker_pending_payments", "Payments in status pending.")
PENDING_OLDEST_AGE = Gauge(
    "payment_worker_pending_oldest_age_seconds",
    "Age of the oldest pending payment (0 when none is pending).",
)
RECONCILER_RUNS = Counter(
    "payment_worker_reconciler_runs_total", "Reconciler passes, by result (ok, failed).", ["result"]
)
RECONCILER_LAST_RUN = Gauge(
    "payment_worker_reconciler_last_run_timestamp_seconds",
    "Unix time of this worker's last reconciler pass that completed.",
)
SAMPLE_FAILURES = Counter(
    "payment_worker_state_sample_failures_total",
    "Samples of the lag, outbox and pending gauges that failed, by source (kafka, database).",
    ["source"],
)


# -- the shim's reply listener (an adapter, so its counter lives here, not in the shim's module)

SHIM_REPLIES_DROPPED = Counter(
    "payment_shim_replies_dropped_total",
    "Replies the shim dropped, by reason (undecodable; unexpected: nobody waits for its"
    " correlation id; mismatched: it carries a waiting request's correlation id but answers"
    " another command; error: delivering it failed).",
    ["reason"],
)


class DependencyCall:
    """One call to a dependency, as a context: a client span around it and one observation of
    DEPENDENCY_SECONDS under the outcome its caller sets (ok, not_found, declined, error,
    timeout, degraded) before the block ends (error if it raised first). A class rather than
    a generator-based context manager: several per command, and the generator's machinery
    cost more than the observation."""

    __slots__ = ("_dependency", "_span", "_started", "outcome")

    def __init__(
        self, dependency: str, span_name: str, attributes: Mapping[str, Any] | None
    ) -> None:
        self.outcome = "error"
        self._dependency = dependency
        self._span = tracing.span(span_name, tracing.CLIENT, attributes=attributes)
        self._started = 0.0

    def __enter__(self) -> DependencyCall:
        self._span.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        elapsed = time.perf_counter() - self._started
        try:
            tracing.annotate({"payment.dependency.result": self.outcome})
            key = (self._dependency, self.outcome)
            child = _DEPENDENCY_CHILDREN.get(key)
            if child is None:  # labels() takes a lock and builds the key: once per pair
                child = _DEPENDENCY_CHILDREN[key] = DEPENDENCY_SECONDS.labels(*key)
            child.observe(elapsed)
        finally:  # the span ends, and stops being the current one, whatever happened above
            ended = self._span.__exit__(kind, error, trace)
        return ended


_DEPENDENCY_CHILDREN: dict[tuple[str, str], Any] = {}


def dependency_call(
    dependency: str, span_name: str, attributes: Mapping[str, Any] | None = None
) -> DependencyCall:
    """`with dependency_call(...) as call:` around one call to a dependency (DependencyCall)."""
    return DependencyCall(dependency, span_name, attributes)


_COMMAND_CHILDREN: dict[tuple[str, bool], Any] = {}


def count_command(outcome: str, duplicate: bool) -> None:
    """One command answered, in COMMANDS under its outcome and whether it was a duplicate."""
    child = _COMMAND_CHILDREN.get((outcome, duplicate))
    if child is None:  # labels() takes a lock and builds the key: once per pair
        child = COMMANDS.labels(outcome, str(duplicate).lower())
        _COMMAND_CHILDREN[(outcome, duplicate)] = child
    child.inc()
