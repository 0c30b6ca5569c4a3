"""What `payment-worker status` calls a problem (domain/health.py): each threshold, one row."""

from __future__ import annotations

from dataclasses import replace

import pytest

from payment_worker.domain.health import (
    PartitionLag,
    ReconcilerRun,
    StoreState,
    Thresholds,
    problems,
)

CALM = StoreState(0, 0.0, 0, 0, 0.0, [], [], ReconcilerRun("w1", 5.0, 0, 0))
LIMITS = Thresholds(max_lag=10, max_outbox_age_s=60, max_parked=0, max_pending_age_s=300)


@pytest.mark.parametrize(
    ("lags", "state", "expected"),
    [
        ([PartitionLag("cmd", 0, 5, 15, 0)], CALM, []),
        ([PartitionLag("cmd", 0, 5, 16, 0)], CALM, ["cmd[0]: 11 records behind (over 10)"]),
        ([PartitionLag("cmd", 1, None, 30, 25)], CALM, []),  # never committed: from the start
        ([PartitionLag("cmd", 1, None, 40, 25)], CALM, ["cmd[1]: 15 records behind (over 10)"]),
        ([], replace(CALM, outbox_backlog=3, oldest_unsent_s=60.0), []),
        (
            [],
            replace(CALM, outbox_backlog=3, oldest_unsent_s=61.0),
            ["outbox: oldest unsent row is 61 s old (over 60 s; 3 waiting)"],
        ),
        ([], replace(CALM, parked=1), ["outbox: 1 parked rows (over 0)"]),
        (
            [],
            replace(CALM, pending=2, oldest_pending_s=301.0),
            ["payments: oldest pending is 301 s old (over 300 s; 2 pending)"],
        ),
        (
            [],
            replace(CALM, dead_letters_last_hour=[("undecodable", 60), ("unknown-schema", 41)]),
            ["dead letters: 101 in the last hour (over 100)"],
        ),
        ([], replace(CALM, last_reconciler_run=None), []),  # nothing pending: no reconciler needed
        (
            [],
            replace(CALM, pending=1, oldest_pending_s=1.0, last_reconciler_run=None),
            ["reconciler: never ran while 1 payments are pending (over 300 s)"],
        ),
        (
            [],
            replace(CALM, pending=1, last_reconciler_run=ReconcilerRun("w1", 301.0, 0, 4)),
            ["reconciler: last ran 301 s ago while 1 payments are pending (over 300 s)"],
        ),
    ],
    ids=[
        "lag-at-limit",
        "lag-over",
        "uncommitted-at-limit",
        "uncommitted-over",
        "outbox-age-at-limit",
        "outbox-age-over",
        "parked",
        "pending-age-over",
        "dead-letters-over",
        "no-reconciler-nothing-pending",
        "no-reconciler-while-pending",
        "reconciler-silent",
    ],
)
def test_each_threshold_passed_is_one_problem(
    lags: list[PartitionLag], state: StoreState, expected: list[str]
) -> None:
    """At a threshold is healthy; past it is a problem named with its figure and its limit."""
    assert problems(lags, state, LIMITS) == expected
