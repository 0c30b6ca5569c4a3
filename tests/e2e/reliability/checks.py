"""The invariants every fault scenario must keep, measured rather than assumed."""

from __future__ import annotations

import time
from typing import Any

from payment_worker.service.messages import Topics
from payment_worker.testing import KafkaHarness


def measure(
    db: Any,
    kafka: KafkaHarness,
    topics: Topics,
    commands: list[dict[str, Any]],
    row: Any,
    timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Fill the report row and return what was found (for the assertions)."""
    expected = {c["commandId"] for c in commands}
    # Counted by command: after a crash some replies come twice (at least once delivery), so
    # as many replies as commands does not yet mean every command was answered.
    deadline = time.monotonic() + timeout_s
    while True:
        replies = kafka.replies(
            expect=len(commands), timeout_s=max(1.0, deadline - time.monotonic())
        )
        answered = {r.record["commandId"] for r in replies if r.record} & expected
        if answered == expected or time.monotonic() >= deadline:
            break
        time.sleep(1)
    double = db.execute(
        "SELECT count(*) FROM (SELECT order_id FROM payments WHERE status = 'succeeded' "
        "GROUP BY order_id HAVING count(*) > 1) twice"
    ).fetchone()[0]
    pending = db.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()[0]
    succeeded = {
        r[0]
        for r in db.execute("SELECT id::text FROM payments WHERE status = 'succeeded'").fetchall()
    }
    events = kafka.read(
        topics.succeeded, expect=len(succeeded), decode="PaymentSucceeded", timeout_s=60
    )
    event_ids: dict[str, set[str]] = {}
    for event in events:
        event_ids.setdefault(event.record["paymentId"], set()).add(event.record["eventId"])
    dead = kafka.read(topics.dlq, idle_s=1.0)
    row.sent = len(commands)
    row.replies = len(answered)
    row.lost = len(expected - answered)
    row.double_charges = int(double)
    row.stuck_pending = int(pending)
    row.dead_letters = len(dead)
    return {
        "lost": expected - answered,
        "double": int(double),
        "pending": int(pending),
        "succeeded": succeeded,
        "event_ids": event_ids,
        "replies": replies,
        "dead": dead,
    }


def assert_invariants(found: dict[str, Any]) -> None:
    assert not found["lost"], f"{len(found['lost'])} commands without a reply"
    assert found["double"] == 0, "an order was paid twice"
    assert found["pending"] == 0, "a payment stayed pending"
    assert set(found["event_ids"]) == found["succeeded"], "succeeded payments != events"
    assert all(len(ids) == 1 for ids in found["event_ids"].values()), "two event ids, one payment"
